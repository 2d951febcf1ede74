"""Input validation at the entry points: clear messages naming the tensor and what was expected."""

from __future__ import annotations

import torch

from .errors import InputError, ModelError


def check_inputs(x: torch.Tensor, name: str = "x", *, ndims: tuple[int, ...] = (4, 5)) -> None:
    """Images (B, C, H, W) or video (B, C, T, H, W), floating point, values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndims:
        layouts = {4: "(B, C, H, W)", 5: "(B, C, T, H, W)", 3: "(C, H, W)"}
        want = " or ".join(layouts.get(n, f"{n}-D") for n in ndims)
        raise InputError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating point tensor with values in [0, 1], got dtype {x.dtype}")
    if not x.numel():
        return
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass, no copy; NaN propagates and fails below
    if not (lo >= 0 and hi <= 1):
        raise InputError(
            f"{name} must hold values in [0, 1] (normalization belongs inside the model, "
            f"see robustkit.models.Normalized); got range [{lo:.4g}, {hi:.4g}]"
        )


def check_labels(y: torch.Tensor, batch: int, name: str = "y", num_classes: int | None = None) -> None:
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of int64 class indices, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{name} must hold int64 class indices of shape ({batch},), got dtype {y.dtype}")
    if y.shape != (batch,):
        raise InputError(f"{name} must have shape ({batch},) to match the inputs, got {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise InputError(
            f"{name} holds labels outside [0, {num_classes}) : min {int(y.min())}, max {int(y.max())}"
        )


def check_logits(logits: torch.Tensor, batch: int, num_classes: int | None = None) -> None:
    """The model must return finite logits (B, K)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"the model must return logits of shape ({batch}, K), got {shape}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ModelError(
            f"the model returns {logits.shape[1]} classes but the dataset has {num_classes}; "
            "check --model and --data belong together"
        )
    if not torch.isfinite(logits).all():
        raise ModelError("the model returned NaN or infinite logits on clean input")
