"""``faces``: synthetic aligned faces of several identities, eyes at a canonical position.

Each identity has fixed traits (face shape, skin tone, hair colour and style, eyebrows, iris colour,
nose, mouth, beard) drawn once from the identity index; each sample varies lighting, background,
expression and a sub-pixel jitter. The eye centres stay at ``masks.CANONICAL_EYES`` (within half a
pixel at 32 x 32), which is what an aligned face crop looks like and where eyeglass frames go.

The zoo entry ``faces-resnet`` is a compact ResNet trained on it (about 30 s on two CPU cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.masks import CANONICAL_EYES
from ..data.synthetic import grid, image_dataset, uniform
from .zoo import register_small_resnet

IDENTITIES = ["ada", "bo", "chen", "dara", "emeka", "farah", "gus", "hana", "ivan", "jun"]
_IDENTITY_SALT = 7_777


def identity_traits(index: int) -> dict[str, object]:
    """The fixed traits of identity ``index`` (deterministic, independent of split and seed)."""
    g = torch.Generator().manual_seed(_IDENTITY_SALT + index)

    def r(lo: float, hi: float) -> float:
        return uniform(g, lo, hi)

    skin_base = torch.tensor([0.95, 0.78, 0.66]) * r(0.45, 1.0)
    hair_choices = torch.tensor(
        [
            [0.08, 0.06, 0.05],
            [0.35, 0.2, 0.1],
            [0.75, 0.6, 0.3],
            [0.55, 0.15, 0.08],
            [0.6, 0.6, 0.62],
            [0.9, 0.85, 0.7],
        ]
    )
    return {
        "skin": skin_base + torch.tensor([r(-0.04, 0.04), r(-0.04, 0.04), r(-0.04, 0.04)]),
        "hair": hair_choices[index % len(hair_choices)] * r(0.85, 1.1),
        "style": int(torch.randint(0, 4, (), generator=g)),  # 0 short, 1 long, 2 bald, 3 fringe
        "width": r(0.56, 0.72),
        "height": r(0.78, 0.9),
        "hairline": r(-0.62, -0.42),
        "brow": r(0.025, 0.06),
        "brow_tilt": r(-0.08, 0.08),
        "iris": torch.tensor([r(0.05, 0.4), r(0.1, 0.5), r(0.1, 0.6)]),
        "nose": r(0.12, 0.28),
        "mouth": r(0.14, 0.3),
        "lips": torch.tensor([r(0.55, 0.85), r(0.2, 0.4), r(0.25, 0.45)]),
        "beard": bool(torch.rand((), generator=g) < 0.3),
    }


def _ellipse(u, v, cu, cv, au, av):
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1


def render_face(
    g: torch.Generator, label: int, size: int, noise: float = 0.02, supersample: int = 2
) -> torch.Tensor:
    """One face of identity ``label`` as a (3, size, size) tensor in [0, 1]."""
    t = identity_traits(label)
    s = size * supersample
    u, v = grid(s)
    jitter = 0.5 / size  # at most half a pixel
    u = u + uniform(g, -jitter, jitter)
    v = v + uniform(g, -jitter, jitter)
    bg_a, bg_b = torch.rand(3, generator=g) * 0.8 + 0.1, torch.rand(3, generator=g) * 0.8 + 0.1
    mix = ((v + 1) / 2)[None]
    img = bg_a[:, None, None] * (1 - mix) + bg_b[:, None, None] * mix

    def paint(mask: torch.Tensor, color: torch.Tensor) -> None:
        nonlocal img
        m = mask.float()[None]
        img = img * (1 - m) + color[:, None, None] * m

    skin, hair = t["skin"], t["hair"]
    w, h = float(t["width"]), float(t["height"])
    cv = 0.08
    if t["style"] == 1:  # long hair behind the head
        paint(_ellipse(u, v, 0, 0.1, w + 0.14, h + 0.05) & (v <= 0.85), hair)
    paint(
        _ellipse(u, v, -w - 0.02, -0.02, 0.07, 0.14) | _ellipse(u, v, w + 0.02, -0.02, 0.07, 0.14),
        skin * 0.92,
    )
    face = _ellipse(u, v, 0, cv, w, h)
    paint(face, skin)
    if t["style"] != 2:
        top = face & (v <= float(t["hairline"]))
        cap = _ellipse(u, v, 0, cv - 0.04, w + 0.05, h + 0.05) & (v <= float(t["hairline"]) - 0.02)
        paint(top | cap, hair)
        if t["style"] == 3:
            paint(face & (v <= float(t["hairline"]) + 0.16) & (u >= -0.1) & (u <= w), hair)
    if t["beard"]:
        paint(face & (v >= 0.42) & ~_ellipse(u, v, 0, 0.52, float(t["mouth"]) + 0.05, 0.08), hair * 0.9)
    (lu, lv), (ru, rv) = CANONICAL_EYES
    brow_v = lv - 0.17
    tilt = float(t["brow_tilt"])
    for cu, side in ((lu, -1), (ru, 1)):
        bv = brow_v + side * tilt * (u - cu)
        paint(((u - cu).abs() <= 0.15) & ((v - bv).abs() <= float(t["brow"])), hair * 0.7)
        paint(_ellipse(u, v, cu, lv, 0.11, 0.055), torch.tensor([0.95, 0.95, 0.93]))
        paint(_ellipse(u, v, cu, lv, 0.05, 0.05), t["iris"])
        paint(_ellipse(u, v, cu, lv, 0.022, 0.022), torch.tensor([0.02, 0.02, 0.02]))
    nose = float(t["nose"])
    paint((u.abs() <= 0.035) & (v >= 0.0) & (v <= nose), skin * 0.78)
    paint(_ellipse(u, v, 0, nose, 0.08, 0.035), skin * 0.75)
    mouth_open = uniform(g, 0.02, 0.07)
    paint(_ellipse(u, v, 0, 0.52, float(t["mouth"]), mouth_open), t["lips"])
    light = uniform(g, 0.75, 1.2)
    grad = uniform(g, -0.15, 0.15)
    img = img * (light + grad * u)[None]
    img = F.avg_pool2d(img[None], supersample)[0]
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)


faces = image_dataset("faces", IDENTITIES, render_face, sizes=(5000, 1000), eyes=CANONICAL_EYES)
register_small_resnet(
    "faces", faces, len(IDENTITIES), seed=1, epochs=5, about="synthetic aligned faces, 10 identities"
)
