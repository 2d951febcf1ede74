"""Batch augmentation of the training loop: random horizontal flip and random crop with 4-pixel zero
padding (the CIFAR recipe), on the device, drawn from a generator the loop seeds per step.

The random parameters are drawn for the whole *global* batch and each process applies the rows it holds
(``rows``), so a data-parallel run sees the augmentations a one-process run sees, and a resumed run
those of an uninterrupted one. A video clip ``(B, C, T, H, W)`` gets the same flip and crop on every frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

PAD = 4


def augment_batch(
    x: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    rows: slice | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """``x`` augmented as ``kind`` says ("none", "flip", "flip-crop").

    ``total``: rows of the global batch the parameters are drawn for (default ``len(x)``); ``rows``: the
    slice of it that ``x`` holds (default all).
    """
    if kind == "none":
        return x
    if kind not in ("flip", "flip-crop"):
        raise ConfigError(f"augment must be one of none, flip, flip-crop, got {kind!r}")
    if x.ndim not in (4, 5):
        raise ConfigError(
            f"augment '{kind}' needs image (B, C, H, W) or video (B, C, T, H, W) batches, got {tuple(x.shape)}"
        )
    total = len(x) if total is None else total
    rows = rows or slice(0, total)
    flip = (torch.rand(total, generator=generator) < 0.5)[rows].to(x.device)
    if kind == "flip-crop":
        offsets = torch.randint(0, 2 * PAD + 1, (total, 2), generator=generator)[rows]
        x = _crop(x, offsets.to(x.device))
    return torch.where(flip.view((-1,) + (1,) * (x.ndim - 1)), x.flip(-1), x)


def _crop(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each sample zero-padded by ``PAD`` on every side and cropped back to its size at its (top, left)."""
    shape = x.shape
    h, w = shape[-2:]
    flat = F.pad(x.reshape(shape[0], -1, h, w), (PAD, PAD, PAD, PAD))
    ys = offsets[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    xs = offsets[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    b = torch.arange(shape[0], device=x.device)[:, None, None]
    out = flat.permute(0, 2, 3, 1)[b, ys[:, :, None], xs[:, None, :]]  # (B, H, W, C*T)
    return out.permute(0, 3, 1, 2).reshape(shape)
