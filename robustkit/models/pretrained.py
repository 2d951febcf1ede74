"""Pretrained weights by name through the libraries' own registries and caches.

- ``torchvision:NAME --pretrained [WEIGHTS]``: the weights enum of torchvision's registry
  (``get_model_weights(NAME).DEFAULT`` or ``[WEIGHTS]``), the file torch.hub caches in
  ``$TORCH_HOME/hub/checkpoints/<file of the weights' url>``, loaded by torchvision's own builder.
- ``timm:NAME[.TAG] --pretrained``: timm's ``pretrained_cfg``; the Hugging Face hub cache
  (``$HF_HOME/hub/models--timm--NAME.TAG/snapshots/<commit>/model.safetensors``) or, for weights only at a
  url, torch.hub's cache; loaded by ``timm.create_model``.

Every ``torch.load`` underneath runs with ``weights_only=True`` (:func:`weights_only_loads`). Offline, a
missing file is a :class:`~robustkit.errors.ModelError` naming the file the cache expects, where to put it,
and how to fetch it on a machine with network. The input normalization comes from the same metadata
(torchvision's weights transforms, timm's ``pretrained_cfg``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .inputsize import torchvision_input
from .normalized import IMAGENET_MEAN, IMAGENET_STD

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside the block runs with ``weights_only=True``, whatever its caller passes
    (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): for third-party loaders that pass ``weights_only=False``."""
    saved = {
        k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub caches the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<basename>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, urllib.error.URLError | socket.error | ConnectionError | TimeoutError) or any(
        word in text
        for word in ("connection", "resolve", "name or service", "offline", "timed out", "localentry")
    )


def _read_failure(spec: str, exc: Exception, where: str) -> ModelError:
    if isinstance(exc, pickle.UnpicklingError):
        return ModelError(
            f"--model {spec}: the cached weights {where} hold pickled objects that could run code; refused "
            f"(robustkit loads weights with weights_only=True). Delete the file and fetch it again ({exc})"
        )
    return ModelError(
        f"--model {spec}: the cached weights {where} could not be read ({type(exc).__name__}: {exc}); a "
        "truncated download? Delete the file and run again to fetch it"
    )


def _head(spec: str, theirs: int, ours: int | None) -> None:
    if ours is not None and ours != theirs:
        raise ModelError(
            f"--model {spec} --pretrained has a {theirs}-class head but the data has {ours} classes: evaluate it "
            f"on data labelled with its {theirs} classes (e.g. --data imagenet), or fine-tune a {ours}-class "
            "head and pass those weights with --weights"
        )


# ----------------------------------------------------------------------------- torchvision
def torchvision_weights(name: str, tag: bool | str) -> Any:
    """The weights enum member of torchvision's registry for ``name`` (``DEFAULT`` for ``True``)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"torchvision has no pretrained weights for '{name}'") from exc
    key = "DEFAULT" if tag is True else str(tag)
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise ConfigError(f"torchvision '{name}' has no weights '{key}'; it has {names}") from None


def torchvision_normalization(name: str, weights: Any = None) -> tuple[tuple, tuple, str]:
    """(mean, std, where from) for a torchvision architecture: its weights' transforms (the default
    weights when none are named), ImageNet's when the registry has none."""
    if weights is None:
        try:
            weights = torchvision_weights(name, True)
        except ConfigError:
            return (*IMAGENET, "ImageNet's (torchvision has no weights metadata for this architecture)")
    transforms = weights.transforms()
    mean, std = getattr(transforms, "mean", IMAGENET[0]), getattr(transforms, "std", IMAGENET[1])
    return tuple(mean), tuple(std), f"torchvision {weights}"


def torchvision_pretrained(
    spec: str, name: str, tag: bool | str, num_classes: int | None, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """torchvision's builder with weights from its registry, read from (or downloaded into) torch.hub's
    cache, every load with ``weights_only=True``."""
    import torchvision

    weights = torchvision_weights(name, tag)
    _head(spec, len(weights.meta.get("categories") or []) or 1000, num_classes)
    path = hub_checkpoint(weights.url)
    try:
        with weights_only_loads():
            model = torchvision.models.get_model(name, weights=weights, progress=progress)
    except Exception as exc:
        if path.is_file():
            raise _read_failure(spec, exc, str(path)) from exc
        if not _network_error(exc):
            raise
        raise ModelError(
            f"--model {spec} --pretrained: the weights {weights} are not in torch.hub's cache and cannot be "
            f"downloaded ({type(exc).__name__}: {exc}). Expected the file {path}: download {weights.url} on a "
            f"machine with network and put it there (or set TORCH_HOME to the folder holding hub/checkpoints/"
            f"{path.name}); or pass --weights FILE without --pretrained"
        ) from exc
    mean, std, source = torchvision_normalization(name, weights)
    declared = torchvision_input(name, weights)
    info = {"weights": str(path), "pretrained": str(weights), "input": declared,
            "input_size": declared["size"][0] if declared else None}  # fmt: skip
    return model, {**info, "normalization_default": (mean, std, source)}


# ----------------------------------------------------------------------------- timm
def timm_cfg(name: str) -> Any:
    """timm's ``pretrained_cfg`` of ``name`` (``arch`` or ``arch.tag``), None when it has none."""
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, KeyError, ValueError):
        return None


def timm_normalization(name: str, model: nn.Module | None = None) -> tuple[tuple, tuple, str]:
    """(mean, std, where from): the model's ``pretrained_cfg`` (or the registry's for ``name``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg:
        found = timm_cfg(name)
        cfg = found.to_dict() if found is not None else {}
    if "mean" in cfg and "std" in cfg:
        tag = cfg.get("tag")
        return (
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
            f"timm pretrained_cfg of {name.split('.')[0]}" + (f".{tag}" if tag else ""),
        )
    return (*IMAGENET, "ImageNet's (timm has no pretrained_cfg for this architecture)")


def _hf_cached(repo: str, filename: str | None) -> str | None:
    """The cached file of ``repo`` in the Hugging Face hub cache, looked up without network."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for name in [filename] if filename else HF_FILES:
        found = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached at all (offline mode off and its host resolves):
    without this, an offline machine waits through the hub client's retries before failing."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "", 443)
    except OSError:
        return False
    return True


def timm_pretrained(spec: str, name: str, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model(name, pretrained=True)`` from the Hugging Face cache or torch.hub's, or
    downloaded into them when the hub can be reached, every load with ``weights_only=True``."""
    import timm

    cfg = timm_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(f"--model {spec} --pretrained: timm has no pretrained weights for '{name}'")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    _head(spec, int(cfg.num_classes or 1000), num_classes)
    overlay: dict[str, Any] = {}
    where = None
    if cfg.hf_hub_id and (cached := _hf_cached(cfg.hf_hub_id, cfg.hf_hub_filename)):
        overlay, where = {"file": cached}, cached  # read from the cache, no network round trip
    elif cfg.url and not cfg.hf_hub_id and hub_checkpoint(cfg.url).is_file():
        where = str(hub_checkpoint(cfg.url))
    elif cfg.hf_hub_id and not _hub_reachable():
        repo = cfg.hf_hub_id.partition("@")[0]
        folder = _hf_cache_dir() / f"models--{repo.replace('/', '--')}"
        file = cfg.hf_hub_filename or HF_FILES[0]
        raise ModelError(
            f"--model {spec} --pretrained: the weights {full} are not in the Hugging Face cache and the hub cannot "
            f"be reached. Expected the file {folder}/snapshots/<commit>/{file} (with {folder}/refs/main holding "
            f"<commit>): on a machine with network run `python -c \"import timm; timm.create_model('{full}', "
            f"pretrained=True)\"` and copy that machine's ~/.cache/huggingface/hub/{folder.name} to {folder} (or "
            f"set HF_HOME to a folder whose hub/ holds it); or "
            f"download https://huggingface.co/{repo}/resolve/main/{file} and pass --model timm:{cfg.architecture} "
            f"--weights {file} without --pretrained"
        )
    try:
        with weights_only_loads():
            model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=overlay or None)
    except Exception as exc:
        if where is not None:
            raise _read_failure(spec, exc, where) from exc
        if not _network_error(exc):
            raise
        expected = hub_checkpoint(cfg.url) if cfg.url else _hf_cache_dir()
        raise ModelError(
            f"--model {spec} --pretrained: the weights {full} could not be downloaded ({type(exc).__name__}: "
            f"{exc}). Expected them in {expected}: fetch them on a machine with network (timm.create_model("
            f"'{full}', pretrained=True)) and copy the cache here, or pass --weights FILE without --pretrained"
        ) from exc
    mean, std, source = timm_normalization(full, model)
    size = model.pretrained_cfg.get("input_size")
    info = {"weights": where or str(cfg.hf_hub_id or cfg.url), "pretrained": full,
            "input_size": int(size[-1]) if size else None}  # fmt: skip
    return model, {**info, "normalization_default": (mean, std, source)}
