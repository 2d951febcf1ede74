"""Resolve ``--model`` specs: a zoo name, a torchvision or timm architecture with local weights, or a
Python factory ``package.module:function``. Weights load only through safetensors or
``torch.load(weights_only=True)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..builtin.zoo import ZOO, load_zoo_model
from ..errors import ConfigError, ModelError
from ..registry import suggest
from .checkpoint import load_into
from .normalized import Normalized

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_model_for(dataset: str) -> str:
    """The zoo model trained on a built-in dataset."""
    for name in ZOO.names():
        if ZOO.create(name).dataset == dataset:
            return name
    raise ConfigError(
        f"no zoo model is trained on '{dataset}'; pass --model (a zoo name, an architecture with --weights, "
        "or package.module:function)"
    )


def _factory(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec}: cannot import module '{module_name}' ({exc})") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"--model {spec}: module '{module_name}' has no attribute '{attr}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"--model {spec}: '{attr}' is not callable")
    return fn


def _architecture(name: str, num_classes: int | None) -> nn.Module | None:
    import torchvision

    kwargs = {"num_classes": num_classes} if num_classes else {}
    tv_name = name.removeprefix("torchvision:")
    if tv_name in torchvision.models.list_models():
        return torchvision.models.get_model(tv_name, weights=None, **kwargs)
    import timm

    timm_name = name.removeprefix("timm:")
    if name.startswith("timm:") or timm.is_model(timm_name):
        if not timm.is_model(timm_name):
            raise ConfigError(f"--model {name}: timm has no architecture '{timm_name}'")
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    return None


def _is_video_architecture(spec: str) -> bool:
    from .video import VIDEO_MODELS

    return spec.removeprefix("torchvision:") in VIDEO_MODELS and not spec.startswith("timm:")


def load_model(
    spec: str | nn.Module | Callable | None,
    *,
    dataset: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model in eval mode on ``device``, provenance info)."""
    info: dict[str, Any] = {}
    if spec is None:
        if dataset is None:
            raise ConfigError("no model given and no built-in dataset to pick a zoo model for")
        spec = default_model_for(dataset)
    if any(c.__module__.startswith("art.estimators") for c in type(spec).__mro__):
        from ..art import from_estimator  # an ART estimator: its torch model, preprocessing and clip_values

        spec = from_estimator(spec)
    if isinstance(spec, nn.Module) or (callable(spec) and not isinstance(spec, str)):
        model = spec
        info["kind"] = "object"
        info["name"] = type(spec).__name__
    elif spec in ZOO:
        model = load_zoo_model(spec, device=device, progress=progress)
        info.update(kind="zoo", name=spec)
    elif ":" in spec and not spec.startswith(("timm:", "torchvision:")):
        result = _factory(spec)()
        if any(c.__module__.startswith("art.estimators") for c in type(result).__mro__):
            from ..art import from_estimator  # a factory may return an ART estimator too

            result = from_estimator(result)
        if not isinstance(result, nn.Module) and not callable(result):
            raise ConfigError(f"--model {spec}: the factory returned {type(result).__name__}, not a model")
        model = result
        info.update(kind="factory", name=spec)
    elif _is_video_architecture(spec):
        from .video import video_model  # Kinetics / pytorchvideo statistics, SlowFast pathway packing

        if weights is None or not num_classes:
            raise ConfigError(
                f"--model {spec} is a video architecture: pass --weights FILE and a dataset with classes. "
                "Nothing is downloaded."
            )
        mean, std = normalize or (None, None)
        model = video_model(
            spec.removeprefix("torchvision:"), num_classes, weights=weights, mean=mean, std=std
        )
        info.update(kind="architecture", name=spec, weights=str(weights), video=True)
        if isinstance(model, Normalized):
            info.update(mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
        weights, normalize = None, None
    else:
        arch = _architecture(spec, num_classes)
        if arch is None:
            raise ConfigError(
                f"unknown model '{spec}'{suggest(spec, ZOO.names())}: not a zoo model ({', '.join(ZOO.names())}), "
                "a torchvision or timm architecture, or package.module:function"
            )
        if weights is None:
            raise ConfigError(
                f"--model {spec} is an architecture without weights; pass --weights FILE (.safetensors or a state dict). "
                "Nothing is downloaded."
            )
        mean, std = normalize or (IMAGENET_MEAN, IMAGENET_STD)
        load_into(arch, weights)
        model = Normalized(arch, mean, std)
        info.update(kind="architecture", name=spec, weights=str(weights), mean=list(mean), std=list(std))
        weights = None
    if weights is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError("--weights needs a model that is an nn.Module")
        target = model.model if isinstance(model, Normalized) else model
        load_into(target, weights)
        info["weights"] = str(weights)
    if normalize is not None and info.get("kind") != "architecture":
        model = Normalized(model, *normalize)
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    elif not callable(model):
        raise ModelError(f"{spec!r} is not a model")
    return model, info
