"""What printing does to an artefact, and how printable it is.

- :func:`quantize_to_palette` snaps pixels to their nearest printable colour (what a printer limited to
  the palette can reproduce at best).
- :func:`color_transfer` and :func:`palette_shift` are the colour changes between the screen and the
  photographed print that print-aware EOT draws: an affine colour matrix (the printer and camera's
  colour transfer) and a random shift of every palette colour (each printed ink comes out a little
  off), spread to the pixels near that colour.
- :func:`printability` measures an artefact: non-printability (Sharif et al.), total variation, the
  mean distance to the palette and the fraction of pixels within a tolerance of it.
"""

from __future__ import annotations

import torch

from .penalties import nearest_distance, palette_distances, printable_palette, sharif_nps, total_variation

# Within this RGB distance (in [0, 1] units; about 10/255 per channel) a pixel counts as printable.
PRINT_TOLERANCE = 0.05


def quantize_to_palette(
    x: torch.Tensor, palette: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Every pixel of ``x`` (B, 3, H, W) (under ``mask`` (B or 1, 1, H, W) when given) replaced by its
    nearest palette colour."""
    pal = printable_palette(palette, device=x.device).to(x.dtype)
    idx = palette_distances(x, pal).argmin(-1)  # (B, H, W)
    snapped = pal[idx].permute(0, 3, 1, 2)
    if mask is None:
        return snapped
    m = mask.to(x.dtype)
    return x * (1 - m) + snapped * m


def _blend(x: torch.Tensor, printed: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return printed
    m = mask.to(x.dtype)
    return x * (1 - m) + printed * m


def color_transfer(
    x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``clip(M @ rgb + b)`` per pixel, with one colour matrix ``M`` (N, 3, 3) and offset ``b`` (N, 3)
    per image of ``x`` (N, 3, H, W); only under ``mask`` when given. Differentiable in ``x``."""
    out = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + bias.to(x.dtype)[..., None, None]
    return _blend(x, out.clamp(0, 1), mask)


def palette_shift(
    x: torch.Tensor,
    palette: torch.Tensor,
    offsets: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Shift each pixel by the offsets (N, P, 3) of the palette colours near it: the weights are a
    softmax over ``-distance / temperature``, so a pixel on a palette colour moves with that colour and
    one between colours with a blend of them. Only under ``mask`` when given; differentiable in ``x``."""
    pal = palette.to(device=x.device, dtype=x.dtype)
    w = torch.softmax(-palette_distances(x, pal) / temperature, dim=-1)  # (N, H, W, P)
    shift = torch.einsum("nhwp,npc->nchw", w, offsets.to(x.dtype))
    return _blend(x, (x + shift).clamp(0, 1), mask)


def printability(
    texture: torch.Tensor,
    mask: torch.Tensor | None = None,
    palette: torch.Tensor | None = None,
    tolerance: float = PRINT_TOLERANCE,
) -> dict[str, torch.Tensor]:
    """How printable an artefact is, one value per image (B,): ``nps`` (Sharif et al.'s score on the
    per-colour scale of :func:`sharif_nps`), ``tv`` (total variation, mean over the masked pixels),
    ``palette_distance`` (mean distance to the nearest printable colour) and ``printable_fraction``
    (pixels within ``tolerance`` of a printable colour), all over the pixels under ``mask``."""
    x = texture.detach().float()
    pal = printable_palette(palette, device=x.device)
    m = (
        torch.ones_like(x[:, :1])
        if mask is None
        else mask.detach().to(x).expand(x.shape[0], 1, *x.shape[-2:])
    )
    area = m.flatten(1).sum(1).clamp_min(1.0)
    near = nearest_distance(x, pal)
    return {
        "nps": sharif_nps(x, pal, m),
        "tv": total_variation(x, m),
        "palette_distance": (near * m).flatten(1).sum(1) / area,
        "printable_fraction": ((near <= tolerance).to(x) * m).flatten(1).sum(1) / area,
    }
