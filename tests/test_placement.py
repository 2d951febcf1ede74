"""Patch / mask compositing on kornia warps, and the TV / printability penalties."""

from __future__ import annotations

import math

import torch

from robustkit.functional.penalties import non_printability, printable_palette, total_variation
from robustkit.functional.placement import (
    composite,
    masked_add,
    paste,
    placement_matrix,
    rect_masks,
    render,
    replace,
    sample_placement,
    shape_mask,
    side_for_area,
    similarity_from_points,
    warp_mask,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_axis_aligned_square_lands_on_exact_pixels():
    m = placement_matrix(torch.zeros(1), torch.tensor([10.0]), torch.tensor([[15.5, 15.5]]), (10, 10))
    out, alpha = paste(torch.zeros(1, 3, 32, 32), torch.ones(3, 10, 10), shape_mask("square", 10), m)
    assert torch.allclose(alpha[0, 0, 11:21, 11:21], torch.ones(10, 10))
    assert abs(float(alpha.sum()) - 100.0) < 1e-3 and abs(float(out.sum()) - 300.0) < 1e-3


def test_patch_area_matches_the_requested_fraction():
    for kind in ("square", "circle"):
        side = side_for_area(kind, 0.1, 64, 64)
        tex = max(4, round(side))
        m = placement_matrix(
            torch.tensor([0.0]), torch.tensor([side]), torch.tensor([[31.5, 31.5]]), (tex, tex)
        )
        _, alpha = render(torch.ones(3, tex, tex), shape_mask(kind, tex), m, (64, 64))
        assert abs(float(alpha.sum()) / (64 * 64) - 0.1) < 0.012, kind


def test_rotation_keeps_the_area_of_a_circle():
    a0 = placement_matrix(torch.tensor([0.0]), torch.tensor([16.0]), torch.tensor([[31.5, 31.5]]), (16, 16))
    a1 = placement_matrix(torch.tensor([37.0]), torch.tensor([16.0]), torch.tensor([[31.5, 31.5]]), (16, 16))
    _, m0 = render(torch.ones(3, 16, 16), shape_mask("circle", 16), a0, (64, 64))
    _, m1 = render(torch.ones(3, 16, 16), shape_mask("circle", 16), a1, (64, 64))
    assert abs(float(m0.sum()) - math.pi * 64) < 4
    assert abs(float(m0.sum()) - float(m1.sum())) < 1.0


def test_gradient_reaches_the_texture_through_warp_and_perspective():
    tex = torch.rand(3, 8, 8, generator=gen(1), dtype=torch.float64).requires_grad_(True)
    x = torch.rand(2, 3, 16, 16, generator=gen(2), dtype=torch.float64)
    place = sample_placement(2, gen(3), (16, 16), 8.0, rotation_max=30, distortion_scale_max=0.3)
    m = placement_matrix(
        *(place[k].double() for k in ("angle", "side", "center")), (8, 8), place["distortion"].double()
    )
    alpha = shape_mask("square", 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: paste(x, t, alpha, m)[0], (tex,), eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_sample_placement_keeps_the_patch_inside_and_is_seeded():
    p1 = sample_placement(200, gen(4), (32, 32), 10.0, rotation_max=20, scale_min=0.8, scale_max=1.2)
    p2 = sample_placement(200, gen(4), (32, 32), 10.0, rotation_max=20, scale_min=0.8, scale_max=1.2)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    half = p1["side"][:, None] / 2
    assert ((p1["center"] - half >= -0.5 - 1e-5) & (p1["center"] + half <= 31.5 + 1e-5)).all()
    assert p1["angle"].abs().max() <= 20 and p1["scale"].min() >= 0.8 and p1["scale"].max() <= 1.2


def test_replace_composite_and_masked_add():
    x = torch.rand(2, 3, 8, 8, generator=gen(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    tex = torch.zeros_like(x)
    out = replace(x, tex, mask)
    assert torch.equal(out[..., 2:4, 2:4], tex[..., 2:4, 2:4]) and torch.equal(
        out[..., 5:, 5:], x[..., 5:, 5:]
    )
    assert torch.equal(composite(x, torch.zeros_like(x), torch.zeros(2, 1, 8, 8)), x)
    added = masked_add(x, torch.full_like(x, 5.0), mask)
    assert torch.equal(added[..., 2:4, 2:4], torch.ones(2, 3, 2, 2)) and torch.equal(
        added[..., :2, :], x[..., :2, :]
    )


def test_similarity_maps_eye_pairs_and_warps_masks():
    src = torch.tensor([[[10.0, 14.0], [22.0, 14.0]]])
    dst = torch.tensor([[[30.0, 40.0], [50.0, 55.0]]])
    s = similarity_from_points(src, dst)
    pts = torch.cat([src[0], torch.ones(2, 1)], 1) @ s[0].T
    assert torch.allclose(pts[:, :2], dst[0], atol=1e-4)
    mask = torch.zeros(1, 32, 32)
    mask[0, 14, 10] = 1
    moved = warp_mask(mask, similarity_from_points(src, src + 3), (32, 32))
    assert float(moved[0, 0, 17, 13]) > 0.99


def test_rect_masks():
    m = rect_masks(torch.tensor([[0, 0], [5, 6]]), (3, 2), (8, 8))
    assert m.shape == (2, 1, 8, 8) and m[0].sum() == 6 and m[1, 0, 5:8, 6:8].sum() == 6


def test_total_variation_and_printability():
    flat = torch.full((1, 3, 8, 8), 0.5)
    noisy = torch.rand(1, 3, 8, 8, generator=gen(6))
    assert float(total_variation(flat)) < 1e-3 < float(total_variation(noisy))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    half = flat.clone()
    half[..., 4:, :] = noisy[..., 4:, :]
    assert float(total_variation(half, mask)) < 1e-3  # variation outside the mask is free
    pal = printable_palette()
    printable = pal[7].view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert float(non_printability(printable, pal)) < 1e-5 < float(non_printability(noisy, pal))
    tex = noisy.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((non_printability(tex) + total_variation(tex)).sum(), tex)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
