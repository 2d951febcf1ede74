"""Regularizers for printable physical perturbations: total variation and non-printability score.

Both return one value per sample, shape (B,), averaged over the pixels of an optional mask so that
their weight does not depend on the size of the sticker or frame.
"""

from __future__ import annotations

import torch

from .palette import load_palette


def printable_palette(spec=None, device=None) -> torch.Tensor:
    """The printable colours (P, 3): ``spec`` names a built-in palette or a palette file (see
    :mod:`robustkit.functional.palette`); the default is the 30 colours Sharif et al. measured."""
    return load_palette(spec, device=device)


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


def palette_distances(
    x: torch.Tensor, palette: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """Euclidean RGB distance of every pixel of ``x`` (B, 3, H, W) to every palette colour, (B, H, W, P)."""
    pal = printable_palette(palette, device=x.device).to(x.dtype)
    pix = x.permute(0, 2, 3, 1)[..., None, :]  # (B, H, W, 1, 3)
    return torch.sqrt(((pix - pal) ** 2).sum(-1) + eps)


def _masked_mean(score: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    w = _weights(x, mask)
    return (score * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)


def log_nps(x: torch.Tensor, palette: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Per pixel, the log of Sharif et al.'s non-printability ``prod_p |pixel - p|``: ``sum_p log |pixel
    - p|``, (B, 1, H, W), in float64. The product of 30 factors below 1 is tiny (1e-20 is usual) and
    spans many orders of magnitude from pixel to pixel; its log is well scaled. ``-inf`` on a palette
    colour when ``eps`` is 0."""
    return palette_distances(x.double(), palette, eps=eps).log().sum(-1)[:, None]


def sharif_nps(
    x: torch.Tensor, palette: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Non-printability score as Sharif et al. (2016) define it: per pixel the product over the palette
    colours of the distance, mean over the masked pixels, (B,) in float64 (from about 1e-20 to 1
    for 30 colours). Zero exactly when every pixel is a printable colour. A measure, not a penalty:
    its gradient is as small as its value (use :func:`non_printability`)."""
    score = log_nps(x.detach(), palette, eps=0.0).exp()
    return _masked_mean(score, x.double(), None if mask is None else mask.double())


def non_printability(
    x: torch.Tensor,
    palette: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 0.01,
) -> torch.Tensor:
    """The non-printability penalty, mean over the masked pixels: (B,).

    Sharif et al.'s score is zero exactly where one factor ``|pixel - p|`` of its product is zero, and
    near a printable colour the product is governed by that smallest factor. This penalty is the same
    product's smallest factor taken smoothly: a soft minimum over the palette of the distances,
    ``-t * logsumexp(-d_p / t)`` (log space, no underflow), which equals the distance to the nearest
    printable colour to within ``t * log P``. Its gradient points at the nearest colour with about unit
    length wherever the pixel is, so ordinary weights (0.1 to 10) move the texture; the raw product's
    gradient varies by ten orders of magnitude and more between pixels, so no one weight suits it.
    """
    d = palette_distances(x, palette)
    soft_min = -temperature * torch.logsumexp(-d / temperature, dim=-1)
    return _masked_mean(soft_min[:, None], x, mask)


def nearest_distance(x: torch.Tensor, palette: torch.Tensor | None = None) -> torch.Tensor:
    """Distance of every pixel to its nearest printable colour, (B, 1, H, W)."""
    return palette_distances(x, palette, eps=0.0).amin(-1)[:, None]
