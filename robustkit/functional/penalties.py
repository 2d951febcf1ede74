"""Regularizers for printable physical perturbations: total variation and non-printability score.

Both return one value per sample, shape (B,), averaged over the pixels of an optional mask so that
their weight does not depend on the size of the sticker or frame.
"""

from __future__ import annotations

import itertools

import torch


def printable_palette(levels: tuple[float, ...] = (0.1, 0.5, 0.9), device=None) -> torch.Tensor:
    """A default set of printable colours (P, 3): every combination of ``levels`` per channel.

    Sharif et al. (2016) and RP2 measure the palette from test prints of a given printer; without one
    this conservative grid keeps colours away from the saturated extremes printers do not reach. Pass a
    measured palette to :func:`non_printability` for real prints.
    """
    return torch.tensor(list(itertools.product(levels, repeat=3)), dtype=torch.float32, device=device)


def _weights(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x[:, :1])
    return mask.expand(x.shape[0], 1, *x.shape[-2:]).to(x.dtype)


def total_variation(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Isotropic total variation (Sharif et al. 2016), mean over the masked pixels: (B,).

    ``sum_ij sqrt((x_ij - x_i+1,j)^2 + (x_ij - x_i,j+1)^2)``, counting a pixel only when it and both of
    its neighbours lie inside the mask (so the frame's outline against the face costs nothing).
    """
    w = _weights(x, mask)
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    tv = torch.sqrt((dx**2 + dy**2).sum(1, keepdim=True) + eps)
    wm = w[..., :-1, :-1] * w[..., :-1, 1:] * w[..., 1:, :-1]
    return (tv * wm).flatten(1).sum(1) / wm.flatten(1).sum(1).clamp_min(1.0)


def non_printability(
    x: torch.Tensor, palette: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Non-printability score (Sharif et al. 2016): per pixel the product over printable colours of the
    colour distance, mean over the masked pixels: (B,). Zero when every pixel is a printable colour."""
    pal = (printable_palette(device=x.device) if palette is None else palette.to(x.device)).to(x.dtype)
    pix = x.permute(0, 2, 3, 1)[..., None, :]  # (B, H, W, 1, 3)
    dist = torch.sqrt(((pix - pal) ** 2).sum(-1) + 1e-12)  # (B, H, W, P)
    score = dist.prod(-1)[:, None]
    w = _weights(x, mask)
    return (score * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
