"""Animated previews of video attacks: clean | adversarial | amplified difference, frame by frame.

``clip_animation`` is a pure function from two clips to the bytes of an animated GIF or WebP (PIL),
ready to embed in the self-contained report as a ``data:`` URI.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

FORMATS = {"gif": "GIF", "webp": "WEBP"}


def _as_float(clip: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[0] not in (1, 3):
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise InputError(f"{name} must be one clip (C, T, H, W) with C = 1 or 3, got {shape}")
    clip = clip.detach().cpu()
    return clip.float() / 255 if clip.dtype == torch.uint8 else clip.float().clamp(0, 1)


def clip_animation(
    clean: torch.Tensor,
    adv: torch.Tensor,
    amplify: float | None = None,
    *,
    fps: float = 4.0,
    min_height: int = 96,
    gap: int = 2,
    format: str = "gif",
) -> bytes:
    """Bytes of an animation whose frame t shows clean_t, adv_t and ``0.5 + amplify * (adv_t - clean_t)``.

    ``clean`` / ``adv``: ``(C, T, H, W)`` float in [0, 1] or uint8. ``amplify=None`` scales the
    difference so its largest magnitude over the clip reaches the full range (a zero difference stays
    flat gray). Small frames are enlarged (nearest neighbour) to ``min_height`` pixels. ``format`` is
    'gif' or 'webp' (lossless); the animation loops forever.
    """
    a, b = _as_float(clean, "clean"), _as_float(adv, "adv")
    if a.shape != b.shape:
        raise InputError(f"clean {tuple(a.shape)} and adv {tuple(b.shape)} must have the same shape")
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    diff = b - a
    if amplify is None:
        peak = float(diff.abs().max())
        amplify = 0.5 / peak if peak > 0 else 1.0
    amp = (0.5 + amplify * diff).clamp(0, 1)
    c, t, h, w = a.shape
    scale = max(1, -(-min_height // h))  # ceil
    sep = torch.ones(c, t, h, gap)
    strip = torch.cat([a, sep, b, sep, amp], dim=3)  # (C, T, H, 3W + 2 gap)
    strip = strip.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    pixels = (strip * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (T, H', W', C)
    if c == 1:
        pixels = np.repeat(pixels, 3, axis=3)
    frames = [Image.fromarray(np.ascontiguousarray(f), "RGB") for f in pixels]
    out = io.BytesIO()
    options: dict = {"save_all": True, "append_images": frames[1:], "duration": round(1000 / fps), "loop": 0}
    if format == "webp":
        options["lossless"] = True
    frames[0].save(out, format=FORMATS[format], **options)
    return out.getvalue()
