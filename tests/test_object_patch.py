"""The universal patch placed in object coordinates: sampled in the object's unit square, mapped into
each image by the object's corners and clipped to its footprint, in training and in evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.attacks.physical import quantize
from robustkit.errors import ConfigError
from robustkit.functional.placement import (
    ObjectGeometry,
    object_placement_matrix,
    paste,
    sample_object_placement,
    shape_mask,
)
from robustkit.functional.random import sample_generators

FAST = {"max_iter": 3, "batch_size": 8, "train_samples": 20, "eot": {"n_samples": 2}, "eval_draws": 3,
        "eval_grid": False, "size": 0.2}  # fmt: skip


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(64, 10)).eval()  # fmt: skip


@pytest.fixture(scope="module")
def signs20():
    from robustkit.builtin.signs import signs

    return signs("test", n=20)  # every class twice


def test_every_patch_pixel_lies_on_the_sign_in_every_evaluated_image(signs20):
    ds, model = signs20, tiny_model()
    off = ds.objects.mask == 0
    attack = create_attack("patch", placement="object", **FAST)
    attack_fit = attack.fit(model, ds.x, ds.y, generator=torch.Generator().manual_seed(0), objects=ds.objects)
    assert attack_fit.patch is not None and attack_fit.training_cost.backward == 3
    res = attack_fit(model, ds.x, ds.y, generator=sample_generators(0, range(20)), objects=ds.objects)
    assert res.artifacts["placed_on"] == "object"
    # the adversarial image differs from the clean one on the sign only, and does differ on every sign
    assert torch.equal(res.x_adv[off.expand_as(ds.x)], quantize(ds.x)[off.expand_as(ds.x)])
    assert (res.x_adv != quantize(ds.x)).flatten(1).any(1).all()
    # the recorded placements replay exactly, and their patch alpha is zero wherever the sign is not
    place = {k: torch.tensor(v) for k, v in res.artifacts["object_placement"].items()}
    out, alpha = attack_fit.render_at(ds.x, attack_fit.patch, place, footprint=True, objects=ds.objects)
    assert torch.equal(quantize(out), res.x_adv)
    # ``placement`` describes them in pixels (for the report): the unclipped patch's centre and size
    shown = {k: torch.tensor(v) for k, v in res.artifacts["placement"].items()}
    side = attack_fit.patch.shape[-1]
    m = object_placement_matrix(
        ds.objects.corners, place["angle"], place["side"], place["center"], (side, side)
    )
    _, whole = paste(ds.x, attack_fit.patch, shape_mask("circle", side), m)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = whole[:, 0].flatten(1).sum(1)
    centre = torch.stack([(whole[:, 0] * xs).flatten(1).sum(1), (whole[:, 0] * ys).flatten(1).sum(1)], 1)
    assert torch.allclose(centre / mass[:, None], shown["center"], atol=0.3)
    assert torch.allclose(mass, torch.pi / 4 * shown["side"] ** 2, rtol=0.1)
    assert float(alpha[off].abs().sum()) == 0 and (alpha.flatten(1).amax(1) > 0.5).all()
    # so are the held-out placements behind placement_success_rate
    draws = {k: torch.tensor(v) for k, v in res.artifacts["eval_placement"].items()}
    rows, alpha = attack_fit.render_at(ds.x.repeat(3, 1, 1, 1), attack_fit.patch, draws, footprint=True,
                                       objects=ds.objects.repeat(3))  # fmt: skip
    assert float(alpha[off.repeat(3, 1, 1, 1)].abs().sum()) == 0
    assert res.metrics["placement_success_rate"].shape == (20,)
    # and the training renders (the same sampler, on minibatches of training objects)
    for seed in range(3):
        _, _, alpha = attack_fit._render(ds.x, attack_fit.patch, torch.Generator().manual_seed(seed), 2,
                                         mask=True, objects=ds.objects)  # fmt: skip
        assert float(alpha[off.repeat(2, 1, 1, 1)].abs().sum()) == 0
    # in image coordinates the same patch lands off the sign on some images
    image = create_attack("patch", placement="image", **FAST).replace(patch=attack_fit.patch)
    loose = image(model, ds.x, ds.y, generator=sample_generators(0, range(20)))
    assert (loose.x_adv[off.expand_as(ds.x)] != quantize(ds.x)[off.expand_as(ds.x)]).any()


def test_the_placement_follows_the_object():
    """The same placement in object coordinates moves with the object's corners and scales with them;
    sampled placements are the same in object coordinates whatever the object's position and size."""
    attack = create_attack("patch", placement="object", patch_type="square", size=0.25, eval_grid=False)
    texture = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[4.0, 4.0], [20.0, 4.0], [20.0, 20.0], [4.0, 20.0]])
    x = torch.zeros(3, 3, 40, 40)
    objects = ObjectGeometry(torch.stack([box, box + torch.tensor([12.0, 6.0]), (box - 4) * 2 + 4]))
    place = {"angle": torch.zeros(3), "side": torch.full((3,), 0.5), "center": torch.full((3, 2), 0.5)}
    _, alpha = attack.render_at(x, texture, place, footprint=True, objects=objects)
    mass = alpha[:, 0].flatten(1).sum(1)

    def centroid(a: torch.Tensor) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
        return torch.stack([(a * xs).sum(), (a * ys).sum()]) / a.sum()

    c = [centroid(alpha[i, 0]) for i in range(3)]
    assert torch.allclose(c[1] - c[0], torch.tensor([12.0, 6.0]), atol=0.05)  # moved with the object
    assert abs(float(mass[2] / mass[0]) - 4.0) < 0.3  # twice the object's side: four times the area
    assert torch.allclose(c[0], torch.tensor([12.0, 12.0]), atol=0.5)  # the box's centre
    assert abs(float(mass[0]) - 64.0) < 4  # half the box's side: a quarter of its 16 x 16 pixels
    # a rotation of the object rotates the patch with it: the patch's corner lands at the rotated spot
    turned = torch.stack([box[1], box[2], box[3], box[0]])  # the same square, a quarter turn
    corner = {
        "angle": torch.zeros(1),
        "side": torch.full((1,), 0.25),
        "center": torch.tensor([[0.125, 0.125]]),
    }
    _, a0 = attack.render_at(x[:1], texture, corner, footprint=True, objects=ObjectGeometry(box[None]))
    _, a1 = attack.render_at(x[:1], texture, corner, footprint=True, objects=ObjectGeometry(turned[None]))
    assert torch.allclose(centroid(a0[0, 0]), torch.tensor([6.0, 6.0]), atol=0.5)
    assert torch.allclose(centroid(a1[0, 0]), torch.tensor([18.0, 6.0]), atol=0.5)
    # sampling: the draws from the same generators are the same object-frame placements
    gens = sample_generators(3, range(3))
    drawn = sample_object_placement(objects, sample_generators(3, range(3)), (40, 40), 0.4, rotation_max=20)
    again = sample_object_placement(ObjectGeometry(box[None].expand(3, 4, 2)), gens, (40, 40), 0.4,
                                    rotation_max=20)  # fmt: skip
    for k in drawn:
        assert torch.allclose(drawn[k], again[k]), k
    assert ((drawn["center"] >= 0.2 - 1e-6) & (drawn["center"] <= 0.8 + 1e-6)).all()  # inside the box


def test_sampled_centres_lie_on_the_footprint():
    """The centre is drawn on the object's footprint (a disk inscribed in the box), not in its corners."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disk = (((xx - 15.5) ** 2 + (yy - 15.5) ** 2) <= 12**2).float()[None, None].expand(200, 1, 32, 32)
    box = torch.tensor([[3.5, 3.5], [27.5, 3.5], [27.5, 27.5], [3.5, 27.5]])
    geometry = ObjectGeometry(box[None].expand(200, 4, 2), disk)
    place = sample_object_placement(geometry, torch.Generator().manual_seed(0), (32, 32), 0.1)
    r = (place["center"] - 0.5).norm(dim=1)
    assert float(r.max()) <= 0.5 + 1 / 32
    square = sample_object_placement(ObjectGeometry(box[None].expand(200, 4, 2)),
                                     torch.Generator().manual_seed(0), (32, 32), 0.1)  # fmt: skip
    assert float((square["center"] - 0.5).norm(dim=1).max()) > 0.55  # the box's corners, without the disk


def test_object_placement_without_geometry_is_a_clear_config_error(signs20):
    ds, model = signs20, tiny_model()
    attack = create_attack("patch", placement="object", **FAST)
    with pytest.raises(ConfigError, match="placement 'object' needs the geometry of the object"):
        attack.fit(model, ds.x, ds.y, generator=torch.Generator().manual_seed(0))
    fitted = attack.fit(model, ds.x, ds.y, generator=torch.Generator().manual_seed(0), objects=ds.objects)
    with pytest.raises(ConfigError, match="corners"):
        fitted(model, ds.x, ds.y)
    with pytest.raises(ConfigError, match="placement must be one of image, object, auto"):
        create_attack("patch", placement="sign")
    with pytest.raises(ConfigError, match="object_size"):
        create_attack("patch", object_size=1.5)
    # auto: on the object with geometry, in the image without (the same as placement: image)
    auto = fitted.replace(placement="auto")
    gens = sample_generators(0, range(20))
    assert auto(model, ds.x, ds.y, generator=gens, objects=ds.objects).artifacts["placed_on"] == "object"
    plain = auto(model, ds.x, ds.y, generator=sample_generators(0, range(20)))
    image = fitted.replace(placement="image")(model, ds.x, ds.y, generator=sample_generators(0, range(20)))
    assert plain.artifacts["placed_on"] == "image" and torch.equal(plain.x_adv, image.x_adv)


def test_a_run_on_the_signs_fits_and_places_the_patch_on_the_sign(tmp_path):
    """The runner hands the training split's geometry to ``fit`` and each batch's to the attack."""
    from robustkit import evaluate
    from robustkit.builtin.signs import signs

    ds = signs("test", n=20)
    suite = {
        "name": "p",
        "attacks": [{"attack": "patch", "placement": "object", **FAST, "train_samples": 16}],
    }
    r = evaluate(tiny_model(), ds, suite, out=tmp_path, name="signs", keep_adversarial=True, report=False,
                 progress=False, batch_size=10)  # fmt: skip
    idx, x_adv = r.adversarial("patch")
    assert len(idx) >= 1
    off = (ds.objects.mask[idx] == 0).expand_as(x_adv)
    assert torch.equal(x_adv[off], quantize(ds.x[idx])[off])
    assert (x_adv != quantize(ds.x[idx])).flatten(1).any(1).all()


def test_the_physical_recipe_places_its_patch_on_the_object_where_the_data_know_it():
    from pathlib import Path

    from robustkit.evaluation.suite import load_suite

    suite = load_suite(str(Path(__file__).parents[1] / "attacks" / "physical.yaml"))
    patch = next(e.attack for e in suite.entries if e.attack_key == "patch")
    assert patch.placement == "auto" and patch.size == 0.1 and patch.object_size == 0.2
    # 20% of a built-in sign's box is about the 10% of the image the patch covers elsewhere
    assert abs(patch.base_side(32, 32, True) * 0.7 * 32 - patch.base_side(32, 32)) < 0.1 * patch.base_side(
        32, 32
    )
