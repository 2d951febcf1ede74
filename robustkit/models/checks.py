"""Checks of a model before anything is evaluated: where its weights are (not on the meta device, on one
device), and what one forward pass on a probe batch does (no exception, floating-point logits, output and
weights left on the input's device). Each failure is a :class:`~robustkit.errors.ModelError` naming the
model and what was expected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ModelError


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def weight_devices(model: Any) -> set[torch.device]:
    """The devices holding ``model``'s parameters and buffers (empty for a callable that is no module)."""
    return {t.device for _, t in _tensors(model)} if isinstance(model, nn.Module) else set()


def check_not_meta(model: Any, name: str) -> None:
    """Refuse a model whose weights are on the meta device (shapes without data)."""
    if not isinstance(model, nn.Module):
        return
    meta = [n for n, t in _tensors(model) if t.is_meta]
    if meta:
        raise ModelError(
            f"model {name}: {len(meta)} parameter(s)/buffer(s) are on the meta device (shapes without values, "
            f"e.g. '{meta[0]}'): it was built without weights. Expected a model with real weights: load them "
            "in the factory (model.to_empty(device='cpu') then load_state_dict, or load_state_dict(..., "
            "assign=True))"
        )


def probe(model: Callable, x: torch.Tensor, name: str) -> Any:
    """``model(x)`` under ``torch.no_grad()``, with whatever goes wrong turned into a ``ModelError``: an
    exception inside the model, logits that are not floating point, output or weights moved off ``x``'s
    device. Returns the output (its shape and values are the caller's to check)."""
    before = weight_devices(model)
    what = f"a probe batch {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} on {x.device}"
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the user's code: any exception is the model's, named with the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"model {name} raised {type(exc).__name__} on {what}: {first}. Expected it to map images in "
            f"[0, 1] on {x.device} to logits (B, K); run it on such a batch yourself (or pass --debug for the "
            "traceback)"
        ) from exc
    after = weight_devices(model)
    if after != before:
        raise ModelError(
            f"model {name} moved its own weights during forward (from {_names(before)} to {_names(after)}). "
            "Expected a model that stays where robustkit puts it (--device): remove .to()/.cuda() calls from "
            "forward"
        )
    if isinstance(out, torch.Tensor):
        if out.device != x.device:
            raise ModelError(
                f"model {name} returned its logits on {out.device} for input on {x.device}. Expected them on "
                "the input's device: remove .to()/.cuda() calls from forward and choose the device with --device"
            )
        if not (out.is_floating_point() or out.is_complex()):
            raise ModelError(
                f"model {name} returned {str(out.dtype).removeprefix('torch.')} logits. Expected floating-point "
                "scores (float32, float16 or bfloat16) before any argmax: attacks differentiate them"
            )
    return out


def _names(devices: set[torch.device]) -> str:
    return ", ".join(sorted(str(d) for d in devices)) or "nowhere"
