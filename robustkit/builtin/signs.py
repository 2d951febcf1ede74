"""``signs``: synthetic traffic-sign-like objects on varied backgrounds (for sticker attacks).

Ten classes modelled on common European signs: a coloured plate (octagon, disk, triangle, diamond)
with a border and a glyph. The sign is centred (jitter of a few percent) and the dataset knows
where: ``objects`` holds each sign's corners and footprint, so that stickers drawn in object
coordinates (``robustkit.functional.placement.anchor``) land on the sign; each sample varies the size, a small in-plane rotation,
the background (sky / foliage gradient with clutter), a post, lighting and noise.

The zoo entry ``signs-resnet`` is a compact ResNet trained on it (about 30 s on two CPU cores).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.synthetic import SyntheticDataset, balanced, grid, register_dataset, uniform
from ..functional.placement import ObjectGeometry
from .zoo import register_small_resnet

CLASSES = [
    "stop", "yield", "no-entry", "speed-limit", "no-overtaking",
    "ahead-only", "turn-right", "keep-left", "warning", "priority-road",
]  # fmt: skip

RED = torch.tensor([0.8, 0.08, 0.1])
WHITE = torch.tensor([0.95, 0.95, 0.95])
BLUE = torch.tensor([0.1, 0.25, 0.75])
BLACK = torch.tensor([0.05, 0.05, 0.05])
YELLOW = torch.tensor([0.98, 0.8, 0.1])


def _polygon(u: torch.Tensor, v: torch.Tensor, sides: int, radius: float, phase: float) -> torch.Tensor:
    """Regular polygon of circumradius ``radius`` (inside -> True)."""
    ang = torch.atan2(v, u) - phase
    sector = 2 * math.pi / sides
    local = torch.remainder(ang, sector) - sector / 2
    r = torch.sqrt(u * u + v * v)
    return r * torch.cos(local) <= radius * math.cos(sector / 2)


def _arrow(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An arrow pointing up (-v), in sign-local units."""
    shaft = (u.abs() <= 0.12) & (v >= -0.15) & (v <= 0.55)
    head = (v >= -0.55) & (v <= -0.1) & (u.abs() <= (v + 0.55) * 0.8)
    return shaft | head


def _rotate(u, v, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def _sign(
    label: int, u: torch.Tensor, v: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Layers (mask, colour) of sign ``label`` in local coordinates (unit radius) and its footprint."""
    r = torch.sqrt(u * u + v * v)
    disk, ring_in = r <= 1, r <= 0.78
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    if label == 0:  # stop: red octagon, white rim, white band
        plate = _polygon(u, v, 8, 1.0, math.pi / 8)
        layers = [
            (plate, WHITE),
            (_polygon(u, v, 8, 0.9, math.pi / 8), RED),
            ((v.abs() <= 0.16) & (u.abs() <= 0.6), WHITE),
        ]
        return layers, plate
    if label == 1:  # yield: inverted triangle, red rim, white inside
        plate = _polygon(u, v, 3, 1.0, math.pi / 2)
        return [(plate, RED), (_polygon(u, v, 3, 0.58, math.pi / 2), WHITE)], plate
    if label == 2:  # no entry: red disk, white bar
        return [(disk, RED), ((v.abs() <= 0.2) & (u.abs() <= 0.68), WHITE)], disk
    if label == 3:  # speed limit: red ring, white disk, two black digits
        digits = (((u + 0.25).abs() <= 0.17) | ((u - 0.25).abs() <= 0.17)) & (v.abs() <= 0.38)
        holes = (((u + 0.25).abs() <= 0.07) | ((u - 0.25).abs() <= 0.07)) & (v.abs() <= 0.24)
        return [(disk, RED), (ring_in, WHITE), (digits & ~holes, BLACK)], disk
    if label == 4:  # no overtaking: red ring, white disk, red and black blocks side by side
        return [
            (disk, RED), (ring_in, WHITE),
            (((u + 0.25).abs() <= 0.17) & (v.abs() <= 0.3), BLACK),
            (((u - 0.25).abs() <= 0.17) & (v.abs() <= 0.3), RED),
        ], disk  # fmt: skip
    if label == 5:  # ahead only: blue disk, white arrow up
        return [(disk, BLUE), (_arrow(u, v), WHITE)], disk
    if label == 6:  # turn right: blue disk, white arrow right
        au, av = _rotate(u, v, math.pi / 2)
        return [(disk, BLUE), (_arrow(au, av), WHITE)], disk
    if label == 7:  # keep left: blue disk, white arrow down-left
        au, av = _rotate(u, v, -3 * math.pi / 4)
        return [(disk, BLUE), (_arrow(au, av), WHITE)], disk
    if label == 8:  # warning: red triangle rim, white inside, black exclamation mark
        plate = _polygon(u, v + 0.12, 3, 1.05, -math.pi / 2)
        inner = _polygon(u, v + 0.05, 3, 0.7, -math.pi / 2)
        mark = ((u.abs() <= 0.07) & (v >= -0.25) & (v <= 0.2)) | (
            (u.abs() <= 0.07) & (v >= 0.3) & (v <= 0.42)
        )
        return [(plate, RED), (inner, WHITE), (mark, BLACK)], plate
    if label == 9:  # priority road: white diamond, black edge, yellow centre
        plate = u.abs() + v.abs() <= 1
        return [
            (plate, WHITE),
            (u.abs() + v.abs() <= 0.74, BLACK),
            (u.abs() + v.abs() <= 0.66, YELLOW),
        ], plate
    raise ValueError(label)


def draw_sign(
    g: torch.Generator, label: int, size: int, noise: float = 0.025, supersample: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sign of class ``label``: the image (3, size, size) in [0, 1], the corners (4, 2) of the sign's
    box (its local [-1, 1]^2, as ``ObjectGeometry`` orders them) in image pixels, and the footprint of
    its plate (1, size, size) in [0, 1] (the fraction of each pixel the plate covers)."""
    u, v = grid(size * supersample)
    sky = torch.tensor([uniform(g, 0.4, 0.7), uniform(g, 0.55, 0.85), uniform(g, 0.7, 1.0)])
    ground = torch.tensor([uniform(g, 0.1, 0.45), uniform(g, 0.25, 0.6), uniform(g, 0.05, 0.35)])
    horizon = uniform(g, -0.4, 0.6)
    mix = torch.sigmoid((v - horizon) * 6)[None]
    img = sky[:, None, None] * (1 - mix) + ground[:, None, None] * mix
    for _ in range(int(torch.randint(2, 6, (), generator=g))):  # clutter: soft blobs of random colour
        cu, cv, rad = uniform(g, -1, 1), uniform(g, -1, 1), uniform(g, 0.1, 0.35)
        blob = torch.sigmoid((rad - torch.sqrt((u - cu) ** 2 + (v - cv) ** 2)) * 25)[None]
        img = img * (1 - blob) + torch.rand(3, generator=g)[:, None, None] * blob
    radius = uniform(g, 0.62, 0.78)
    cx, cy = uniform(g, -0.06, 0.06), uniform(g, -0.06, 0.06)
    post = ((u - cx).abs() <= 0.05) & (v >= cy)
    img = torch.where(post[None], torch.tensor([0.45, 0.45, 0.48])[:, None, None], img)
    angle = uniform(g, -0.15, 0.15)
    lu, lv = _rotate((u - cx) / radius, (v - cy) / radius, angle)
    layers, plate = _sign(label, lu, lv)
    for mask, color in layers:
        img = torch.where(mask[None], color[:, None, None], img)
    gain = uniform(g, 0.6, 1.15)
    tint = 1 + (torch.rand(3, generator=g) - 0.5) * 0.15
    img = img * gain * tint[:, None, None]
    img = F.avg_pool2d(img[None], supersample)[0]
    img = img + noise * torch.randn(img.shape, generator=g)
    footprint = F.avg_pool2d(plate.float()[None, None], supersample)[0]
    return img.clamp(0, 1), sign_corners(cx, cy, radius, angle, size), footprint


def sign_corners(cx: float, cy: float, radius: float, angle: float, size: int) -> torch.Tensor:
    """Image pixel coordinates (4, 2) of the sign-local box corners (-1, -1), (1, -1), (1, 1), (-1, 1)
    of a sign centred at normalized (cx, cy) with ``radius`` and in-plane rotation ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    local = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    lu, lv = local[:, 0], local[:, 1]
    # the inverse of _rotate: image offsets from sign-local coordinates
    u = cx + radius * (c * lu - s * lv)
    v = cy + radius * (s * lu + c * lv)
    return torch.stack([(u + 1) / 2 * size - 0.5, (v + 1) / 2 * size - 0.5], 1)


def render_sign(
    g: torch.Generator, label: int, size: int, noise: float = 0.025, supersample: int = 2
) -> torch.Tensor:
    """One sign of class ``label`` as a (3, size, size) tensor in [0, 1]."""
    return draw_sign(g, label, size, noise, supersample)[0]


def signs(split: str = "test", n: int | None = None, size: int = 32, seed: int = 0) -> SyntheticDataset:
    """``signs``: balanced classes (label = index mod 10). Default sizes: 5000 train, 1000 test.

    The dataset's ``objects`` (``ObjectGeometry``) holds each sign's corners and plate footprint, so
    that stickers drawn in object coordinates land on the sign."""
    n = n if n is not None else (5000 if split == "train" else 1000)
    geometry: list[tuple[torch.Tensor, torch.Tensor]] = []

    def render(g: torch.Generator, label: int) -> torch.Tensor:
        img, corners, footprint = draw_sign(g, label, size)
        geometry.append((corners, footprint))
        return img

    ds = balanced("signs", CLASSES, render, n, split, seed, size=size)
    ds.objects = ObjectGeometry(torch.stack([c for c, _ in geometry]), torch.stack([m for _, m in geometry]))
    return ds


register_dataset("signs")(signs)
register_small_resnet(
    "signs", signs, len(CLASSES), seed=2, epochs=5, about="synthetic traffic signs, 10 classes"
)
