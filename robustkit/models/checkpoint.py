"""Safe weight loading and saving: safetensors, or ``torch.load(weights_only=True)``. Never plain pickle.

Checkpoints come in the layouts training scripts write: a bare state dict, or one wrapped under
``state_dict`` (Lightning, timm), ``model_state_dict`` (the PyTorch tutorials), ``model`` (torchvision's and
DeiT's reference scripts), ``net``, an EMA copy, ...; its keys may carry the prefix of a wrapper
(``module.`` of DataParallel, ``_orig_mod.`` of ``torch.compile``, ``model.`` of a Lightning module).
``load_state`` unwraps the layout (saying at INFO which key it used) and ``load_into`` matches the prefixes
to the model's own keys. A whole pickled model is refused with how to save its weights instead; a
classifier head of another class count is explained in one line with the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError, ModelError, UnsafeCheckpointError

log = logging.getLogger(__name__)

# where training scripts put the weights inside a checkpoint dict, the most common first
WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
    "state_dict_ema",
    "model_ema",
    "ema",
    "last",
)
# prefixes wrappers add to every key: DataParallel / DDP, torch.compile, a Lightning module's attribute
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(
    model_or_state: nn.Module | dict, path: str | Path, metadata: dict[str, str] | None = None
) -> str:
    """Write safetensors atomically and return its SHA-256."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256(path)


def _is_state(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: object, where: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a checkpoint object and the key path it was found under (None: the object is
    the state dict). Non-tensor entries beside the weights (``num_batches_tracked`` as an int, an epoch
    counter) are dropped only when the weights sit under a wrapper key."""
    if _is_state(obj):
        return dict(obj), None  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if _is_state(inner):
                return dict(inner), key
            if isinstance(inner, Mapping):
                for sub in WRAPPER_KEYS:
                    if _is_state(inner.get(sub)):
                        return dict(inner[sub]), f"{key}.{sub}"
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise ModelError(
            f"{where} is a checkpoint dict without a state dict of tensors under any key robustkit knows "
            f"({', '.join(WRAPPER_KEYS)}); its keys are {keys}. Save the model's state_dict() itself"
        )
    raise ModelError(f"{where} does not hold a state dict of tensors (found {type(obj).__name__})")


def _pickled_globals(path: Path) -> list[str]:
    """The classes and functions a torch checkpoint would import when unpickled, read without running
    anything (empty for a file that is not torch's zip format)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint (a plain pickle, a legacy torch file): no list to read
        return []


def _refusal(path: Path, exc: Exception) -> UnsafeCheckpointError:
    first = re.findall(r"GLOBAL ([\w.]+)", str(exc))  # the outermost object's class: the unpickler's first
    names = sorted(_pickled_globals(path)) or first
    if any(n.startswith("torch.nn.modules.") for n in names):
        model_class = next((n for n in names if not n.startswith("torch.")), (first or names)[0])
        return UnsafeCheckpointError(
            f"{path} refused: it is a whole pickled model ({model_class}), not weights, and unpickling it could "
            "run code. robustkit loads weights only (safetensors, or torch.load(weights_only=True)). If you "
            f"trust the file, save its weights once: torch.save(torch.load('{path}', weights_only=False)"
            ".state_dict(), 'weights.pt'), then pass --model ARCHITECTURE (or package.module:function) "
            "--weights weights.pt"
        )
    what = f" ({', '.join(names[:4])})" if names else ""
    return UnsafeCheckpointError(
        f"{path} refused: it holds pickled objects{what} that could run code when loaded ({exc}). Save a plain "
        "state_dict (torch.save(model.state_dict(), 'weights.pt')), or convert it to safetensors."
    )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch checkpoint with ``weights_only=True`` (unwrapped from
    the usual checkpoint layouts; the key used is logged at INFO)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"weights {path} is a directory; expected a .safetensors or .pt/.pth file")
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a readable safetensors file ({exc}); is it truncated?") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read as a torch checkpoint ({exc}); is it truncated?") from exc
    state, key = unwrap(obj, str(path))
    if key is not None:
        log.info("%s: using the weights under the checkpoint's '%s' key", path, key)
    return state


def align_keys(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` with wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) removed or added so that its
    keys match ``expected`` best, and a note of what was done ("" when nothing)."""
    best, note, hits = state, "", len(expected & state.keys())
    if hits == len(state) == len(expected):
        return best, note
    candidates: list[tuple[str, dict[str, torch.Tensor]]] = []
    stripped = state
    for prefix in WRAPPER_PREFIXES:  # strip them in order: module._orig_mod.model.x -> x
        if any(k.startswith(prefix) for k in stripped):
            stripped = {k.removeprefix(prefix): v for k, v in stripped.items()}
            candidates.append((f"removed the prefix '{prefix}'", stripped))
    for prefix in {k.split(".", 1)[0] + "." for k in expected if "." in k}:
        if all(k.startswith(prefix) for k in expected):  # the model wraps the network (Normalized.model)
            for done, cand in [("", state), *candidates]:
                added = {prefix + k: v for k, v in cand.items()}
                candidates.append(((done + " and " if done else "") + f"added the prefix '{prefix}'", added))
    for done, cand in candidates:
        n = len(expected & cand.keys())
        if n > hits:
            best, note, hits = cand, done, n
    return best, note


def head_mismatch(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[int, int, str] | None:
    """(checkpoint classes, model classes, layer) when the only shape differences are the first dimension
    of the classifier's weight and bias; None otherwise."""
    own = model.state_dict()
    diffs = [(k, v.shape, own[k].shape) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if not diffs:
        return None
    counts = {(a[0], b[0]) for _, a, b in diffs if len(a) == len(b) and a[1:] == b[1:] and len(a) >= 1}
    layers = {k.rsplit(".", 1)[0] for k, _, _ in diffs}
    if len(counts) != 1 or len(layers) != 1 or len(diffs) > 2:
        return None
    (theirs, ours), layer = counts.pop(), layers.pop()
    return theirs, ours, layer


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, *, lenient: bool = False
) -> nn.Module:
    """Load ``state`` (a checkpoint's, from ``where``) into ``model`` after matching wrapper prefixes.
    Strict (every key, every shape) unless ``lenient``: then the checkpoint may lack buffers the
    architecture sets itself (input mean/std constants) and carry keys the model does not use, but every
    parameter must be loaded."""
    state, note = align_keys(state, set(model.state_dict()))
    if note:
        log.info("%s: %s of the checkpoint's keys to match %s", where, note, type(model).__name__)
    head = head_mismatch(state, model)
    if head is not None:
        theirs, ours, layer = head
        raise ModelError(
            f"{where} has a {theirs}-class head ({layer}) but the model is built for the data's {ours} classes: "
            f"evaluate it on data with the checkpoint's {theirs} classes, or fine-tune a {ours}-class head "
            "and pass those weights"
        )
    params = {name for name, _ in model.named_parameters()}
    missing = sorted(params - state.keys()) if lenient else []
    try:
        if missing:
            raise RuntimeError(f"Missing key(s) in state_dict: {', '.join(repr(k) for k in missing[:5])}")
        result = model.load_state_dict(state, strict=not lenient)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise ModelError(
            f"{where} does not fit the architecture {type(model).__name__}: " + " ".join(first)
        ) from exc
    if lenient and (result.missing_keys or result.unexpected_keys):
        log.info("%s: kept the architecture's own %s; ignored the checkpoint's unused %s", where,
                 result.missing_keys or "nothing", result.unexpected_keys or "nothing")  # fmt: skip
    return model


def load_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights of ``path`` into ``model`` (strict: every key, every shape)."""
    return load_state_into(model, load_state(path), str(path))
