"""Images as inline data URIs: PNG thumbnails, amplified perturbations, animated video clips.

Thumbnails keep small images at their native size (the page scales them up with crisp pixels) and
shrink larger ones to ``THUMB`` pixels, so the report stays small whatever the input resolution.
"""

from __future__ import annotations

import base64
import inspect
import io
import logging

import torch
from PIL import Image

log = logging.getLogger(__name__)

THUMB = 96


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """uint8 as stored, or float in [0, 1] rounded to 8 bits."""
    if img.dtype == torch.uint8:
        return img
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def _pil(img: torch.Tensor, size: int) -> Image.Image:
    img = to_uint8(img.detach().cpu())
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] not in (1, 3) and img.shape[-1] in (1, 3):
        img = img.permute(2, 0, 1)
    arr = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if max(pil.size) > size:
        pil.thumbnail((size, size), Image.Resampling.LANCZOS)
    return pil


def is_image(t: object) -> bool:
    """A (C, H, W) tensor with 1 or 3 channels, or an (H, W) one: something to show as a picture."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return False
    if t.ndim == 2:
        return min(t.shape) >= 2
    return t.ndim == 3 and t.shape[0] in (1, 3) and min(t.shape[1:]) >= 2


def png_data_uri(img: torch.Tensor, size: int = THUMB) -> str:
    """(C, H, W) uint8 or float in [0, 1] -> 'data:image/png;base64,...' at most ``size`` pixels."""
    buf = io.BytesIO()
    _pil(img, size).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def amplified(clean: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The perturbation scaled to fill [0, 1] around mid-grey, and its L-inf in 1/255 units."""
    d = to_uint8(adv).float() - to_uint8(clean).float()
    m = float(d.abs().max()) if d.numel() else 0.0
    img = (0.5 + 0.5 * d / m).clamp(0, 1) if m > 0 else torch.full_like(d, 0.5)
    return img, m


def frame_norms(clean: torch.Tensor, adv: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-frame L-inf (1/255 units) and L2 (on [0, 1]) of a stored (C, T, H, W) clip pair."""
    d = (to_uint8(adv).float() - to_uint8(clean).float()).transpose(0, 1).flatten(1)  # (T, C*H*W)
    return d.abs().amax(1).tolist(), (d / 255).norm(dim=1).tolist()


def _mime(data: bytes) -> str:
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("unknown image format")


def clip_uri(clean: torch.Tensor, adv: torch.Tensor, amplify: float | None = None) -> tuple[str, bool]:
    """An animated image of a (C, T, H, W) clip pair, ``(data uri, animated)``.

    Uses ``robustkit.report.animation.clip_animation`` when it is installed; otherwise the middle
    frame of the clean clip, the adversarial clip and the amplified perturbation side by side.
    """
    try:
        from .animation import clip_animation
    except ImportError:
        clip_animation = None
    if clip_animation is not None:
        try:
            kwargs: dict[str, object] = {} if amplify is None else {"amplify": amplify}
            if "min_height" in inspect.signature(clip_animation).parameters:
                kwargs["min_height"] = int(clean.shape[-2])  # native size: the page scales it up crisply
            data = clip_animation(to_uint8(clean).float() / 255, to_uint8(adv).float() / 255, **kwargs)
            return f"data:{_mime(data)};base64," + base64.b64encode(data).decode(), True
        except Exception as exc:  # a failed animation degrades to still frames, never a failed report
            log.warning("clip animation failed (%s); showing the middle frame", exc)
    t = clean.shape[1] // 2
    c, a = clean[:, t], adv[:, t]
    diff, _ = amplified(c, a)
    strip = torch.cat([to_uint8(c), to_uint8(a), to_uint8(diff)], dim=2)
    return png_data_uri(strip, size=3 * THUMB), False
