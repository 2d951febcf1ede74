"""Pure tensor helpers for video clips ``(B, C, T, H, W)``: frame layout, temporal resampling,
8-bit quantization and per-frame perturbation metrics.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def check_video(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``InputError`` unless ``x`` is a 5-D clip batch ``(B, C, T, H, W)``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"{name} must be a video batch of shape (B, C, T, H, W) with values in [0, 1], got {shape}; "
            "video attacks do not run on images"
        )


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B * T, C, H, W)``, frames of one clip adjacent."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def from_frames(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`to_frames`."""
    bt, c, h, w = frames.shape
    return frames.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


def gather_frames(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Frame ``index[b, t]`` of clip ``b`` at time ``t``; ``index`` is ``(B, T')`` or ``(T',)`` int64.

    Differentiable in ``x``: the gradient of a frame used twice is the sum of both uses.
    """
    b, c, _, h, w = x.shape
    if index.ndim == 1:
        return x.index_select(2, index.to(x.device))
    idx = index.to(x.device).view(b, 1, -1, 1, 1).expand(b, c, index.shape[1], h, w)
    return x.gather(2, idx)


def shift_index(frames: int, shift: torch.Tensor) -> torch.Tensor:
    """Indices ``(B, T)`` of a clip shifted in time by ``shift[b]`` frames, edges replicated.

    A positive shift delays the clip: frame t shows what was frame t - shift.
    """
    t = torch.arange(frames, device=shift.device)
    return (t[None, :] - shift.long()[:, None]).clamp(0, frames - 1)


def drop_index(keep: torch.Tensor) -> torch.Tensor:
    """Indices ``(B, T)`` replacing every dropped frame (``keep`` False) by the last kept frame before it.

    Frame 0 is always shown (a stream starts with a frame); this is how a camera or a decoder that
    drops frames repeats the previous one.
    """
    keep = keep.clone()
    keep[:, 0] = True
    t = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    return torch.where(keep, t, torch.zeros_like(t)).cummax(dim=1).values


def uniform_frame_indices(total: int, frames: int) -> torch.Tensor:
    """``frames`` indices spread evenly over ``[0, total)``, the temporal subsampling of pytorchvideo."""
    if total <= 0:
        raise InputError("a clip needs at least one frame")
    return torch.linspace(0, total - 1, frames).round().long()


def quantize8(x_adv: torch.Tensor, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """Round the changed pixels of ``x_adv`` to 8 bits; pixels equal to ``x`` stay bit-identical.

    With ``straight_through`` the forward value is quantized and the gradient passes unchanged
    (the straight-through estimator), so an attack can optimize what it will finally submit.
    """
    q = torch.where(x_adv != x, (x_adv * 255).round() / 255, x)
    return x_adv + (q - x_adv).detach() if straight_through else q


def frame_norms(delta: torch.Tensor, p: float) -> torch.Tensor:
    """Per-frame Lp norms ``(B, T)`` of a clip perturbation ``(B, C, T, H, W)``."""
    return delta.transpose(1, 2).flatten(2).norm(p=p, dim=2)


def frame_metrics(delta: torch.Tensor, tol: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-sample ``(B,)`` perturbation figures over the frames of each clip.

    ``frame_linf_mean`` / ``frame_linf_max``: mean and max over frames of the per-frame L-inf norm;
    ``frame_l2_mean`` / ``frame_l2_max`` likewise for L2; ``frames_changed``: fraction of frames with
    any pixel changed by more than ``tol``; ``pixels_changed``: mean fraction of pixel positions
    changed per frame (the L0 figure, a pixel counts once whatever its channels).
    """
    delta = delta.detach().float()
    linf = frame_norms(delta, float("inf"))
    l2 = frame_norms(delta, 2.0)
    changed_px = (delta.abs() > tol).any(dim=1)  # (B, T, H, W)
    return {
        "frame_linf_mean": linf.mean(1),
        "frame_linf_max": linf.amax(1),
        "frame_l2_mean": l2.mean(1),
        "frame_l2_max": l2.amax(1),
        "frames_changed": (linf > tol).float().mean(1),
        "pixels_changed": changed_px.flatten(2).float().mean(2).mean(1),
    }


def frame_mask_from_indices(frames: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Boolean ``(T,)`` mask of the given frame indices (negative indices count from the end)."""
    mask = torch.zeros(frames, dtype=torch.bool)
    for i in indices:
        j = int(i) + frames if int(i) < 0 else int(i)
        if not 0 <= j < frames:
            raise InputError(f"frame index {i} is outside a clip of {frames} frames")
        mask[j] = True
    return mask


def box_mask(
    height: int, width: int, top: torch.Tensor, left: torch.Tensor, box_h: int, box_w: int
) -> torch.Tensor:
    """Boolean masks ``(*top.shape, H, W)`` of axis-aligned boxes with top-left corners ``(top, left)``."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    r = (rows >= top[..., None]) & (rows < top[..., None] + box_h)
    c = (cols >= left[..., None]) & (cols < left[..., None] + box_w)
    return r[..., :, None] & c[..., None, :]


def border_mask(height: int, width: int, border: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of the outer ``border`` pixels of a frame."""
    m = torch.ones(height, width, dtype=torch.bool, device=device)
    if 2 * border < height and 2 * border < width:
        m[border : height - border, border : width - border] = False
    return m
