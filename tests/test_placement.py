"""Patch / mask compositing on kornia warps, and the TV / printability penalties."""

from __future__ import annotations

import math

import pytest
import torch

from robustkit.errors import InputError
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


# ---------------------------------------------------------------------- object-anchored placement
def test_object_coordinates_map_onto_the_objects_corners():
    from robustkit.functional.placement import ObjectGeometry, anchor, object_matrix

    # an axis-aligned object box covering pixels 8..23 x 4..11 (centres), i.e. edges 7.5..23.5, 3.5..11.5
    corners = torch.tensor([[[7.5, 3.5], [23.5, 3.5], [23.5, 11.5], [7.5, 11.5]]])
    m = object_matrix(corners, (4, 8))  # texture pixel (0, 0) covers the object cell [0, 1/8] x [0, 1/4]
    centre = m @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(centre[0, :2] / centre[0, 2], torch.tensor([8.5, 4.5]), atol=1e-4)
    out = anchor(torch.ones(1, 16, 16), ObjectGeometry(corners), (16, 32), clip=False)
    assert torch.allclose(out[0, 0, 4:12, 8:24], torch.ones(8, 16), atol=1e-4)
    assert float(out[0, 0, :3].abs().sum() + out[0, 0, 13:].abs().sum() + out[0, 0, :, :7].abs().sum()) < 1e-4
    # a rotated object: the footprint of the quadrilateral has the quadrilateral's area
    angle = torch.tensor(0.4)
    rot = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    square = torch.tensor([[-6.0, -6.0], [6.0, -6.0], [6.0, 6.0], [-6.0, 6.0]]) @ rot.T + 15.5
    area = ObjectGeometry(square[None]).footprint((32, 32)).sum()
    assert abs(float(area) - 144) < 6
    # a large object's footprint from its corners is sharp: full on its rim, nothing off it, whatever its size
    for lo, hi in ((20, 180), (3, 13)):
        box = torch.tensor(
            [[lo - 0.5, lo - 0.5], [hi - 0.5, lo - 0.5], [hi - 0.5, hi - 0.5], [lo - 0.5, hi - 0.5]]
        )
        foot = ObjectGeometry(box[None]).footprint((200, 200))[0, 0]
        inside = torch.zeros(200, 200, dtype=torch.bool)
        inside[lo:hi, lo:hi] = True
        assert float(foot[inside].min()) > 0.99 and float(foot[~inside].max()) < 0.01, (lo, hi)


def test_every_sticker_pixel_lies_on_the_sign_in_every_image():
    """Over the built-in signs (every class, twice), object-anchored stickers and RP2's found masks
    change no pixel off the sign's plate, and do change pixels on it."""
    from torch import nn

    from robustkit.attacks import create_attack
    from robustkit.attacks.physical import quantize
    from robustkit.builtin.signs import signs
    from robustkit.functional.random import sample_generators

    ds = signs("test", n=20)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(64, 10)).eval()  # fmt: skip
    off = (ds.objects.mask == 0).expand_as(ds.x)
    fast = {"steps": 2, "eot": {"n_samples": 1}, "eval_draws": 0, "eval_grid": False}
    for cfg in ({}, {"mask": "four-squares"}, {"find_mask": True, "mask_steps": 2}):
        attack = create_attack("sticker", **fast, **cfg)
        res = attack(model, ds.x, ds.y, generator=sample_generators(0, range(20)), objects=ds.objects)
        assert torch.equal(res.x_adv[off], quantize(ds.x)[off]), cfg
        changed = (res.x_adv != quantize(ds.x)).flatten(1).any(1)
        assert changed.all(), cfg
        assert float((res.artifacts["masks"] * (ds.objects.mask == 0)).sum()) == 0
    # the image-coordinate mask, by contrast, reaches off the sign (the yield sign's bar in the sky)
    image = create_attack("sticker", placement="image", **fast)
    assert float((image.sticker_mask(ds.x) * (ds.objects.mask == 0)).sum()) > 0


def test_sign_geometry_matches_the_rendered_plate():
    from robustkit.builtin.signs import signs
    from robustkit.functional.placement import ObjectGeometry

    ds = signs("test", n=10)
    quad = ObjectGeometry(ds.objects.corners).footprint((32, 32))
    plate = ds.objects.mask
    # each plate lies inside its box (the warning triangle overhangs by a sliver) and fills much of it
    # (a triangle of circumradius 1 fills 0.32 of its box, a disk 0.79)
    assert float((plate * (quad < 0.01)).sum()) < 1
    assert ((plate.flatten(1).sum(1) / quad.flatten(1).sum(1)) > 0.3).all()


def test_a_run_on_the_signs_places_stickers_on_the_sign(tmp_path):
    """The runner hands each batch's object geometry to the attack: every stored adversarial sign
    differs from its clean image only on the plate."""
    from torch import nn

    from robustkit import evaluate
    from robustkit.attacks.physical import quantize
    from robustkit.builtin.signs import signs

    ds = signs("test", n=30)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(64, 10)).eval()  # fmt: skip
    suite = {"name": "s", "attacks": [{"attack": "sticker", "steps": 2, "eot": {"n_samples": 1},
                                       "eval_draws": 0, "eval_grid": False}]}  # fmt: skip
    r = evaluate(model, ds, suite, out=tmp_path, name="signs", keep_adversarial=True, report=False,
                 progress=False, batch_size=10)  # fmt: skip
    idx, x_adv = r.adversarial("sticker")
    assert len(idx) >= 2  # the samples the untrained model classifies correctly
    off = (ds.objects.mask[idx] == 0).expand_as(x_adv)
    assert torch.equal(x_adv[off], quantize(ds.x[idx])[off])
    assert (x_adv != quantize(ds.x[idx])).flatten(1).any(1).all()


def test_manifest_corners_follow_the_image_folder_preprocessing(tmp_path):
    """Corners annotated on the original photos land on the object after resize and centre crop."""
    import json

    from PIL import Image

    from robustkit.data.loading import load_dataset

    boxes = {}
    for c, cls in enumerate(("a", "b")):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            img = torch.zeros(3, 45, 60)
            x0, y0, x1, y1 = 12 + 3 * i + 5 * c, 9 + 4 * i, 42 + 2 * i, 33 - c  # pixels x0..x1-1, y0..y1-1
            img[0, y0:y1, x0:x1] = 1
            name = f"{cls}/{i}.png"
            Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / "val" / name)
            boxes[name] = [
                [x0 - 0.5, y0 - 0.5],
                [x1 - 0.5, y0 - 0.5],
                [x1 - 0.5, y1 - 0.5],
                [x0 - 0.5, y1 - 0.5],
            ]
    (tmp_path / "corners.json").write_text(json.dumps(boxes))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"name: photos\nformat: imagefolder\nroot: {tmp_path}\nobjects: corners.json\n"
        "preprocessing: {size: 24, resize: 30}\n"
    )
    ds = load_dataset(str(manifest), "test")
    assert len(ds.objects) == len(ds) == 4
    for i in range(4):
        red = ds[i][0][0]
        foot = ds.objects.select([i]).footprint((24, 24))[0, 0]
        assert float(((foot > 0.5) != (red > 0.5)).float().sum()) <= 4  # the edges may round either way
    (tmp_path / "corners.json").write_text(json.dumps({k: v for k, v in boxes.items() if k != "b/1.png"}))
    with pytest.raises(InputError, match="b/1.png"):
        load_dataset(str(manifest), "test")
