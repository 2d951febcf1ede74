"""``shapes``: ten classes of geometric shapes at random position, size, rotation and colour, and its zoo
model ``shapes-resnet``."""

from __future__ import annotations

import math

import torch

from ..data.synthetic import contrasting_colors, grid, image_dataset, uniform
from .zoo import register_small_resnet

CLASSES = [
    "circle", "square", "triangle", "plus", "ring",
    "diamond", "hbar", "vbar", "x-cross", "hollow-square",
]  # fmt: skip


def shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean mask of shape ``kind`` in local coordinates (unit radius)."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    if kind == 0:
        return r <= 1
    if kind == 1:
        return torch.maximum(au, av) <= 0.8
    if kind == 2:
        return (v <= 0.75) & (v >= 2 * au - 1)
    if kind == 3:
        return ((au <= 0.3) & (av <= 1)) | ((av <= 0.3) & (au <= 1))
    if kind == 4:
        return (r <= 1) & (r >= 0.55)
    if kind == 5:
        return au + av <= 1
    if kind == 6:
        return (au <= 1) & (av <= 0.35)
    if kind == 7:
        return (av <= 1) & (au <= 0.35)
    if kind == 8:
        p, q = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
        return ((p.abs() <= 0.25) & (q.abs() <= 1)) | ((q.abs() <= 0.25) & (p.abs() <= 1))
    if kind == 9:
        m = torch.maximum(au, av)
        return (m <= 0.9) & (m >= 0.55)
    raise ValueError(kind)


def render_shape(g: torch.Generator, label: int, size: int, noise: float = 0.03) -> torch.Tensor:
    u, v = grid(size)
    radius = uniform(g, 0.35, 0.6)
    cx, cy = uniform(g, -1 + radius, 1 - radius), uniform(g, -1 + radius, 1 - radius)
    angle = uniform(g, -0.25, 0.25)
    du, dv = (u - cx) / radius, (v - cy) / radius
    ca, sa = math.cos(angle), math.sin(angle)
    lu, lv = ca * du + sa * dv, -sa * du + ca * dv
    mask = shape_mask(label, lu, lv).float()
    bg, fg = contrasting_colors(g)
    img = bg[:, None, None] * (1 - mask) + fg[:, None, None] * mask
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)


shapes = image_dataset("shapes", CLASSES, render_shape, sizes=(8000, 1000))
register_small_resnet("shapes", shapes, len(CLASSES), seed=0, epochs=6, about="shapes, standard training")
