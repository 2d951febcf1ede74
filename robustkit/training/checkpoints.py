"""Training checkpoints: safetensors only, with their JSON state inside the same file.

``checkpoint.safetensors`` (written after every epoch, and within one) holds the model (``model.*``),
the optimizer's tensors (``optim.*``) and generator states (``rng.*``); its metadata holds the JSON training state (epoch, step, settings,
measured cost, optimizer hyper-parameters), so one atomic file is always self-consistent.
``model.safetensors`` + ``model.json`` are the finished model (weights, figures, cost, SHA-256).
Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..files import atomic_write
from ..models.checkpoint import save_weights, sha256

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
FINAL = "model.safetensors"
FINAL_META = "model.json"
STATE_KEY = "robustkit_state"


# ----------------------------------------------------------------------------- optimizer state
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``optim.<param>.<key>``) and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------- per-epoch checkpoint
def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Model, optimizer, ``extra`` tensors (named ``rng.*``: generator states) and the JSON state."""
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    optim, optim_meta = optimizer_tensors(opt)
    tensors.update(optim)
    tensors.update({k: v.detach().cpu().clone() for k, v in (extra or {}).items()})
    blob = json.dumps({**state, "optimizer": optim_meta}, default=str)
    path = out_dir / CHECKPOINT
    save_weights(tensors, path, metadata={STATE_KEY: blob})
    atomic_write(out_dir / "checkpoint.json", json.dumps(json.loads(blob), indent=2))  # human-readable copy
    return path


def read_checkpoint(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the last checkpoint (an epoch's end or within one), or None when there is no
    usable checkpoint."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        state = json.loads(meta[STATE_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable checkpoint %s (%s); training starts over", path, exc)
        return None
    return tensors, state


def split_checkpoint(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    return model, optim


# ----------------------------------------------------------------------------- finished model
def save_final(out_dir: Path, model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "recipe": str(info.get("recipe")),
        "dataset": str(info.get("dataset")),
        "spec": json.dumps(info.get("spec")),
        "settings": json.dumps(info.get("settings")),  # the architecture and what shapes it travel along
        "format": "robustkit-defense",
    }
    digest = save_weights(model, out_dir / FINAL, metadata=meta)
    info = {**info, "weights": str(out_dir / FINAL), "sha256": digest}
    atomic_write(out_dir / FINAL_META, json.dumps(info, indent=2, default=str))
    return info


def read_final(out_dir: Path) -> dict[str, Any] | None:
    """The finished model's info when its weights exist and match their recorded SHA-256."""
    weights, meta = out_dir / FINAL, out_dir / FINAL_META
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        return None
    if info.get("sha256") != sha256(weights):
        log.warning("%s does not match the checksum in %s; it will be retrained", weights, meta)
        return None
    return info
