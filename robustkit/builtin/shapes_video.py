"""``shapes-video``: short clips of moving, rotating and scaling shapes, plus its zoo model.

Eight classes in four pairs. Within a pair the shape is the same and one class is the other played
backwards (right / left, up / down, clockwise / counter-clockwise, growing / shrinking), so the set
of frames of a clip says nothing about its class: only their order does, and a model has to use
time. Across pairs the classes differ by appearance (square, disc, bar, ring) as well.

Clips are ``(C, T, H, W)`` in [0, 1]; batches follow the video contract ``(B, C, T, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.synthetic import SyntheticDataset, balanced, contrasting_colors, grid, register_dataset, uniform
from ..models.normalized import Normalized
from ..models.video import SmallVideoNet
from ..training.seeding import fixed_seed
from .zoo import ZooEntry, register_zoo, train_standard

CLASSES = [
    "square-right", "square-left", "disc-up", "disc-down",
    "bar-clockwise", "bar-counterclockwise", "ring-growing", "ring-shrinking",
]  # fmt: skip


def _soft(sd: torch.Tensor, size: int) -> torch.Tensor:
    """Coverage of a pixel by the inside (sd < 0) of a signed distance in [-1, 1] coordinates."""
    return (0.5 - sd * size / 2).clamp(0, 1)


def _trajectory(g: torch.Generator, frames: int, lo: float, hi: float, travel: float) -> torch.Tensor:
    """Positions over time moving by ``travel`` in total, the whole path inside [lo, hi]."""
    start = uniform(g, lo, hi - travel)
    return start + travel * torch.linspace(0, 1, frames)


def render_clip(g: torch.Generator, label: int, frames: int, size: int, noise: float = 0.03) -> torch.Tensor:
    """One clip ``(3, T, H, W)`` of class ``label``; the odd class of each pair is its partner reversed."""
    u, v = grid(size)
    u, v = u[None], v[None]  # (1, H, W), broadcast over time
    kind, backwards = label // 2, bool(label % 2)
    if kind == 0:  # square moving right
        r = uniform(g, 0.2, 0.3)
        cx = _trajectory(g, frames, -1 + r, 1 - r, uniform(g, 0.6, 0.9))[:, None, None]
        cy = uniform(g, -1 + r, 1 - r)
        sd = torch.maximum((u - cx).abs(), (v - cy).abs()) - r
    elif kind == 1:  # disc moving up (v grows downwards, so up means decreasing v)
        r = uniform(g, 0.2, 0.3)
        cy = _trajectory(g, frames, -1 + r, 1 - r, uniform(g, 0.6, 0.9)).flip(0)[:, None, None]
        cx = uniform(g, -1 + r, 1 - r)
        sd = torch.sqrt((u - cx) ** 2 + (v - cy) ** 2) - r
    elif kind == 2:  # bar rotating clockwise on screen
        length, width = uniform(g, 0.55, 0.75), uniform(g, 0.12, 0.18)
        cx, cy = uniform(g, -0.2, 0.2), uniform(g, -0.2, 0.2)
        a0 = uniform(g, 0, math.pi)
        angle = (a0 + uniform(g, 1.0, 1.6) * torch.linspace(0, 1, frames))[:, None, None]
        ca, sa = torch.cos(angle), torch.sin(angle)
        lu, lv = ca * (u - cx) + sa * (v - cy), -sa * (u - cx) + ca * (v - cy)
        sd = torch.maximum(lu.abs() - length, lv.abs() - width)
    elif kind == 3:  # ring growing
        r0, thick = uniform(g, 0.2, 0.3), uniform(g, 0.08, 0.12)
        cx, cy = uniform(g, -0.15, 0.15), uniform(g, -0.15, 0.15)
        radius = (r0 * (1 + uniform(g, 1.2, 1.8) * torch.linspace(0, 1, frames)))[:, None, None]
        sd = (torch.sqrt((u - cx) ** 2 + (v - cy) ** 2) - radius).abs() - thick
    else:
        raise ValueError(f"label {label} is outside [0, {len(CLASSES)})")
    mask = _soft(sd, size)  # (T, H, W)
    if backwards:
        mask = mask.flip(0)
    bg, fg = contrasting_colors(g)
    clip = bg[:, None, None, None] * (1 - mask[None]) + fg[:, None, None, None] * mask[None]
    clip = clip + noise * torch.randn(clip.shape, generator=g)
    return clip.clamp(0, 1)


@register_dataset("shapes-video")
def shapes_video(
    split: str = "test", n: int | None = None, size: int = 32, frames: int = 8, seed: int = 0
) -> SyntheticDataset:
    """Balanced classes (label = index mod 8), clips ``(3, frames, size, size)``.

    Default sizes: 4000 train, 800 test. Each clip depends only on (seed, split, index).
    """
    if frames < 3 or size < 8:
        raise ValueError(f"shapes-video needs frames >= 3 and size >= 8, got frames={frames}, size={size}")
    n = n if n is not None else (4000 if split == "train" else 800)
    render = lambda g, label: render_clip(g, label, frames, size)  # noqa: E731
    return balanced("shapes-video", CLASSES, render, n, split, seed, size=size, frames=frames)


SHAPES_VIDEO_MEAN = (0.5, 0.5, 0.5)
SHAPES_VIDEO_STD = (0.25, 0.25, 0.25)


def _build() -> nn.Module:
    with fixed_seed(0):  # deterministic initial weights; the caller's generator is left alone
        return Normalized(SmallVideoNet(num_classes=len(CLASSES)), SHAPES_VIDEO_MEAN, SHAPES_VIDEO_STD)


def _train(model: nn.Module, device: torch.device, progress: bool) -> dict:
    return train_standard(
        model, shapes_video("train"), shapes_video("test"), device, epochs=8, batch_size=64, lr=0.05,
        desc="training shapes-video-r3d", progress=progress,
    )  # fmt: skip


register_zoo(
    ZooEntry(
        name="shapes-video-r3d",
        dataset="shapes-video",
        build=_build,
        train=_train,
        input_shape=(3, 8, 32, 32),
        description="Small spatio-temporal ConvNet (3x4x4 patch stem, (2+1)D stages) for 8x32x32 shapes-video clips.",
    )
)
