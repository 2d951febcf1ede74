"""The numpy boundary between ART and robustkit: layouts, value ranges and labels.

ART hands arrays in the estimator's layout and value range (``clip_values``); robustkit works on
float32 tensors in ``[0, 1]`` with channels first, ``(B, C, H, W)`` for images and
``(B, C, T, H, W)`` for video. This module converts between the two and nothing else; it is the
only place in robustkit where numpy arrays become tensors and back.

Layouts (what one batch looks like to the estimator):

- images: ``NCHW`` (``channels_first=True``), ``NHWC`` (``channels_first=False``);
- video: ``NCTHW`` (torchvision / pytorchvideo), ``NTCHW`` (ART's frame-major layout, as in
  ``AdversarialPatchPyTorch``'s "NFCHW"), ``NTHWC`` (channels last).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..registry import suggest

log = logging.getLogger(__name__)

# layout -> permutation taking a tensor in that layout to robustkit's layout
_TO_ROBUSTKIT: dict[str, tuple[int, ...]] = {
    "NCHW": (0, 1, 2, 3),
    "NHWC": (0, 3, 1, 2),
    "NCTHW": (0, 1, 2, 3, 4),
    "NTCHW": (0, 2, 1, 3, 4),
    "NTHWC": (0, 4, 1, 2, 3),
}
LAYOUTS = tuple(_TO_ROBUSTKIT)
ROBUSTKIT_LAYOUT = {4: "NCHW", 5: "NCTHW"}


def check_layout(layout: str) -> str:
    if layout not in _TO_ROBUSTKIT:
        raise ConfigError(
            f"unknown layout {layout!r}{suggest(str(layout), LAYOUTS)}; use one of {', '.join(LAYOUTS)}"
        )
    return layout


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def to_robustkit(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A batch in ``layout`` as robustkit's channels-first layout."""
    perm = _TO_ROBUSTKIT[layout]
    return t if perm == tuple(range(len(perm))) else t.permute(perm)


def from_robustkit(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A batch in robustkit's layout as ``layout``."""
    perm = _TO_ROBUSTKIT[layout]
    return t if perm == tuple(range(len(perm))) else t.permute(_inverse(perm))


def shape_to_robustkit(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """One sample's shape (no batch axis) in robustkit's layout."""
    perm = _TO_ROBUSTKIT[layout]
    full = (1, *shape)
    return tuple(full[i] for i in perm)[1:]


def shape_from_robustkit(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    perm = _inverse(_TO_ROBUSTKIT[layout])
    full = (1, *shape)
    return tuple(full[i] for i in perm)[1:]


def detect_layout(input_shape: Sequence[int], channels_first: bool, layout: str | None = None) -> str:
    """The layout of an estimator's input: given explicitly, or read from ``input_shape``.

    A 4-D sample shape is video: ``(T, C, H, W)`` when its second entry looks like a channel count
    (1 or 3) and its first does not, else ``(C, T, H, W)``. Pass ``layout`` when that guess is wrong.
    """
    if layout is not None:
        check_layout(layout)
        if len(layout) - 1 != len(input_shape):
            raise ConfigError(
                f"layout {layout} is for {len(layout) - 1}-D samples, the input shape is {tuple(input_shape)}"
            )
        return layout
    if len(input_shape) == 3:
        return "NCHW" if channels_first else "NHWC"
    if len(input_shape) == 4:
        if not channels_first:
            return "NTHWC"
        c0, c1 = input_shape[0], input_shape[1]
        if c1 in (1, 3) and c0 not in (1, 3):
            return "NTCHW"
        if c0 in (1, 3) and c1 in (1, 3):
            log.warning("input shape %s is ambiguous; assuming (C, T, H, W). Pass layout='NTCHW' for frames first.",
                        tuple(input_shape))  # fmt: skip
        return "NCTHW"
    raise ConfigError(
        f"robustkit attacks images (C, H, W) and video (C, T, H, W) samples; the estimator's input shape is "
        f"{tuple(input_shape)}"
    )


@dataclass(frozen=True)
class ValueRange:
    """The estimator's ``clip_values`` (scalars, or arrays broadcastable to one sample in its layout)."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, clip_values: Any) -> ValueRange:
        if clip_values is None:
            log.info("the estimator has no clip_values; assuming inputs in [0, 1]")
            return cls(np.zeros((), np.float32), np.ones((), np.float32))
        lo, hi = (np.asarray(v, dtype=np.float32) for v in clip_values)
        if np.any(hi <= lo):
            raise ConfigError(f"clip_values must have max > min everywhere, got {clip_values!r}")
        return cls(lo, hi)

    @property
    def unit(self) -> bool:
        return bool(np.all(self.lo == 0) and np.all(self.hi == 1))

    def width(self, what: str = "this attack") -> float:
        """The one scale factor between estimator units and [0, 1] (needed to convert eps and steps)."""
        w = self.hi - self.lo
        if w.size and not np.allclose(w, w.flat[0]):
            raise ConfigError(
                f"{what} has budgets in input units, but clip_values give different ranges per feature; "
                "use one (min, max) pair for all features"
            )
        return float(w.flat[0])

    def tensors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.lo, device=device), torch.as_tensor(self.hi, device=device))


def as_array(x: Any, name: str = "x") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        raise InputError(
            f"{name} must be a numpy array at the ART boundary, got a torch.Tensor (call .numpy())"
        )
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name} must be a numeric numpy array, got dtype {arr.dtype}")
    return arr


def to_unit(
    x: Any, rng: ValueRange, layout: str, device: torch.device | str, name: str = "x", tol: float = 1e-5
) -> torch.Tensor:
    """Estimator input (numpy, estimator layout and range) -> robustkit tensor in [0, 1]."""
    arr = as_array(x, name)
    want = len(layout)
    if arr.ndim != want:
        raise InputError(f"{name} must be a batch of shape ({layout}) ({want}-D), got shape {arr.shape}")
    u = (arr.astype(np.float32) - rng.lo) / (rng.hi - rng.lo)
    if u.size and (not np.isfinite(u).all() or u.min() < -tol or u.max() > 1 + tol):
        lo, hi = float(arr.min()), float(arr.max())
        raise InputError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the estimator's clip_values; "
            "set clip_values on the estimator to the range the data lives in"
        )
    t = torch.from_numpy(np.clip(u, 0.0, 1.0)).to(device)
    return to_robustkit(t, layout).contiguous()


def from_unit(u: torch.Tensor, rng: ValueRange, layout: str, x: np.ndarray | None = None) -> np.ndarray:
    """robustkit tensor in [0, 1] -> estimator array. With the original ``x``, features the attack did
    not touch come back bit-identical (``x + (u - u0) * width``)."""
    arr = from_robustkit(u.detach(), layout).cpu().numpy().astype(np.float32)
    out = rng.lo + arr * (rng.hi - rng.lo)
    if x is not None:
        x32 = np.asarray(x, dtype=np.float32)
        u0 = (x32 - rng.lo) / (rng.hi - rng.lo)
        out = np.where(arr == np.clip(u0, 0, 1), x32, out)
        out = np.clip(out, rng.lo, rng.hi)
    return out.astype(np.float32)


def labels_from(y: Any, n: int, nb_classes: int | None, name: str = "y") -> np.ndarray:
    """ART labels (indices ``(N,)`` or one-hot / scores ``(N, K)``) -> int64 indices ``(N,)``."""
    arr = as_array(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        if nb_classes is not None and arr.shape[1] != nb_classes:
            raise InputError(f"{name} is one-hot with {arr.shape[1]} classes, the estimator has {nb_classes}")
        arr = arr.argmax(1)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(
            f"{name} must hold {n} labels as indices ({n},) or one-hot ({n}, K), got shape {arr.shape}"
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise InputError(f"{name} holds non-integer class indices")
    idx = arr.astype(np.int64)
    if idx.size and (idx.min() < 0 or (nb_classes is not None and idx.max() >= nb_classes)):
        raise InputError(f"{name} holds labels outside [0, {nb_classes}): min {idx.min()}, max {idx.max()}")
    return idx
