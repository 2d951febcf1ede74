"""Physical attacks (patch, eyeglass, sticker, roa): contract, masks respected, 8-bit output, replay,
seeds, model state, and (slow) effectiveness on the demo models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from robustkit.attacks import ATTACKS, create_attack
from robustkit.attacks.physical import quantize
from robustkit.data.masks import eyeglass_mask, sticker_mask
from robustkit.eot import EOT, EOTParams
from robustkit.errors import ConfigError
from robustkit.functional.placement import rect_masks
from robustkit.functional.random import sample_generators

FAST = {
    "patch": {"max_iter": 4, "batch_size": 4, "eot": {"n_samples": 2}, "eval_draws": 2},
    "eyeglass": {"steps": 4},
    "sticker": {"steps": 4, "eot": {"n_samples": 2}},
    "roa": {"steps": 4, "top_c": 3, "stride": 4},
}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(4),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.1, 0.1)
    return m.eval()


def data(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 10


def gens(n: int, seed: int = 0):
    return sample_generators(seed, range(n))


def run(name: str, model, x, y, seed: int = 0, **cfg):
    attack = create_attack(name, **(FAST[name] | {"eval_grid": False} | cfg))
    if name == "patch":
        attack = attack.fit(model, x, y, generator=torch.Generator().manual_seed(seed))
    return attack(model, x, y, generator=gens(x.shape[0], seed))


@pytest.mark.parametrize("name", ["patch", "eyeglass", "sticker", "roa"])
def test_contract_quantized_output_artifacts_and_model_state(name):
    model = tiny_model()
    x, y = data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cls = ATTACKS.get(name)
    assert cls.input_kind == "image" and cls.physical is True
    res = run(name, model, x, y, eval_grid=True)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert torch.equal(res.x_adv, quantize(res.x_adv))  # 8-bit levels
    assert res.success.shape == (6,) and res.success.dtype == torch.bool
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    expected = pred != y if name != "patch" else (pred == 0) & (y != 0)
    assert torch.equal(res.success, expected)
    optimized = {"patch": "patch", "eyeglass": "texture", "sticker": "sticker", "roa": "position"}[name]
    assert optimized in res.artifacts and "eot_curve" in res.artifacts
    json.dumps({k: v for k, v in res.artifacts.items() if not isinstance(v, torch.Tensor)})
    assert all(v.shape == (6,) for v in res.metrics.values())
    assert model.training is False and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["patch", "eyeglass", "sticker", "roa"])
def test_fixed_seed_reproduces(name):
    model = tiny_model()
    x, y = data()
    a, b = run(name, model, x, y, seed=3), run(name, model, x, y, seed=3)
    assert torch.equal(a.x_adv, b.x_adv)


def test_pixels_outside_the_masks_are_untouched():
    model = tiny_model()
    x, y = data()
    q = quantize(x)
    frame = eyeglass_mask(16)
    eg = run("eyeglass", model, x, y)
    off = (frame == 0).expand_as(x[0])
    assert torch.equal(eg.x_adv[:, off], q[:, off])
    assert not torch.equal(eg.x_adv, q)
    st = run("sticker", model, x, y)
    off = (sticker_mask("two-bars", 16) == 0).expand_as(x[0])
    assert torch.equal(st.x_adv[:, off], q[:, off])
    roa = run("roa", model, x, y)
    rect = rect_masks(torch.tensor(roa.artifacts["position"]), tuple(roa.artifacts["rect_hw"]), (16, 16))
    off = (rect == 0).expand_as(x)
    assert torch.equal(roa.x_adv[off], q[off])


def test_eyeglass_replaces_pixels_and_starts_from_the_worst_colour():
    model = tiny_model()
    x, y = data()
    attack = create_attack("eyeglass", steps=1, eval_draws=0, eval_grid=False)
    mask = attack.masks(x)
    from robustkit.attacks.base import Counter

    losses = attack.color_losses(model, x, y, None, mask, Counter())
    init = attack.initial(model, x, y, None, mask, Counter())
    worst = attack._palette(x)[losses.argmax(0)]
    assert torch.equal(init[:, :, 0, 0], worst)
    res = create_attack("eyeglass", steps=30, eval_draws=0, eval_grid=False)(model, x, y)
    inside = mask[0, 0] == 1
    changed = res.x_adv[:, :, inside]
    assert not torch.equal(changed, quantize(x)[:, :, inside])  # replaced, whatever the image was


def test_batch_of_n_equals_n_batches_of_one():
    model = tiny_model()
    x, y = data(4)
    for name in ("eyeglass", "roa"):
        whole = create_attack(name, **FAST[name], eval_grid=False)(model, x, y, generator=gens(4))
        for i in range(4):
            single = create_attack(name, **FAST[name], eval_grid=False)(
                model, x[i : i + 1], y[i : i + 1], generator=gens(4)[i : i + 1]
            )
            assert torch.allclose(whole.x_adv[i], single.x_adv[0], atol=1 / 255 + 1e-6), (name, i)
            assert torch.equal(whole.metrics["eot_success_rate"][i], single.metrics["eot_success_rate"][0])


def test_patch_placements_are_recorded_and_replay_exactly():
    model = tiny_model()
    x, y = data()
    attack = create_attack("patch", **FAST["patch"], eval_grid=False).fit(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert attack.patch is not None and "patch" not in attack.params()
    res = attack(model, x, y, generator=gens(6))
    place = {k: torch.tensor(v) for k, v in json.loads(json.dumps(res.artifacts["placement"])).items()}
    assert torch.equal(quantize(attack.render_at(x, attack.patch, place)), res.x_adv)
    changed = (res.x_adv != quantize(x)).flatten(1).any(1)
    assert changed.all()
    area = (res.x_adv != quantize(x)).any(1).flatten(1).float().mean(1)
    assert (area < 0.2).all()  # about 10% of the image, never the whole of it


def test_sticker_eval_params_replay_and_eot_success_rate():
    model = tiny_model()
    x, y = data()
    res = run("sticker", model, x, y, eval_draws=3)
    params = EOTParams.from_artifact(json.loads(json.dumps(res.artifacts["eval_eot_params"])))
    eot = create_attack("sticker").make_eot(None, rotation=15.0, scale=(0.85, 1.15), translate=0.05, perspective=0.2,
                                             brightness=0.1, contrast=0.15).heldout()  # fmt: skip
    rows = eot.apply(res.x_adv.repeat(3, 1, 1, 1), params)
    with torch.no_grad():
        hits = (model(quantize(rows)).argmax(1) != y.repeat(3)).view(3, -1).float().mean(0)
    assert torch.equal(hits, res.metrics["eot_success_rate"])


def test_roa_exhaustive_search_picks_the_highest_loss_position():
    model = tiny_model()
    x, y = data(3)
    attack = create_attack("roa", search="exhaustive", steps=0, stride=4, eval_draws=0, eval_grid=False)
    res = attack(model, x, y)
    from robustkit.attacks.base import Counter

    rect = attack.rect_size(16, 16)
    grid = attack.grid_positions(16, 16, rect, x.device)
    losses = attack._occluded_losses(model, x, y, None, grid[None].expand(3, *grid.shape), rect, Counter())
    assert res.artifacts["position"] == grid[losses.argmax(1)].tolist()
    guided = create_attack(
        "roa", search="gradient", top_c=len(grid), steps=0, stride=4, eval_draws=0, eval_grid=False
    )
    assert guided(model, x, y).artifacts["position"] == res.artifacts["position"]  # top-C = all: same answer


def test_universal_eyeglass_fits_one_frame():
    model = tiny_model()
    x, y = data(8)
    attack = create_attack("eyeglass", universal=True, identity=None, steps=3, eval_draws=0, eval_grid=False)
    fitted = attack.fit(model, x, y, generator=torch.Generator().manual_seed(0))
    assert fitted.texture.shape == (1, 3, 16, 16)
    res = fitted(model, x, y)
    frame = eyeglass_mask(16)[0] > 0.99
    assert torch.equal(res.x_adv[0][:, frame], res.x_adv[5][:, frame])  # the same frame on every face
    assert create_attack("eyeglass").fit(model, x, y).texture is None  # per-image attack: fit is a no-op


def test_targeted_success_excludes_the_target_class():
    model = tiny_model()
    x, y = data()
    res = create_attack("roa", targeted=True, target_mode=3, steps=2, eval_draws=0, eval_grid=False)(
        model, x, y
    )
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, (pred == 3) & (y != 3))
    assert torch.equal(res.metrics["target"], torch.full_like(y, 3))


def test_config_errors():
    with pytest.raises(ConfigError, match="patch_type"):
        create_attack("patch", patch_type="triangle")
    with pytest.raises(ConfigError, match="photometric"):
        create_attack("patch", eot={"rotation": 10})
    with pytest.raises(ConfigError, match="did you mean 'rotation'"):
        create_attack("sticker", eot={"rotaton": 10})
    with pytest.raises(ConfigError, match="did you mean 'rotation_max'"):
        create_attack("patch", rotation_maxx=10)
    with pytest.raises(ConfigError, match="eyes"):
        create_attack("eyeglass", eyes="guess")
    with pytest.raises(ConfigError, match="search"):
        create_attack("roa", search="random")
    assert isinstance(create_attack("sticker").make_eot({"n_samples": 2}), EOT)


def test_eyeglass_on_the_faces_model_dodges():
    """Small-scale check on the demo model: a few eyeglass steps fool it on most of 6 faces."""
    from robustkit.builtin.faces import faces
    from robustkit.builtin.zoo import load_zoo_model

    model = load_zoo_model("faces-resnet", progress=False)
    ds = faces("test", n=6)
    res = create_attack("eyeglass", steps=30, eval_draws=0, eval_grid=False)(model, ds.x, ds.y)
    assert res.success.float().mean() >= 0.5


# ------------------------------------------------------------------------- done criteria (slow)
# The shipped recipes on the demo models, as `robustkit evaluate --suite <recipe>` runs them.
def recipe_attack(suite: str, entry: int = 0):
    from robustkit.evaluation.suite import load_suite

    return replace(load_suite(suite).entries[entry].attack, eval_grid=False)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_done_eyeglass_and_roa_bring_faces_below_20_percent():
    from robustkit.builtin.faces import faces
    from robustkit.builtin.zoo import load_zoo_model

    model = load_zoo_model("faces-resnet", progress=False)
    ds = faces("test", n=100)
    for suite in ("eyeglass", "roa"):
        res = recipe_attack(suite)(model, ds.x, ds.y, generator=gens(100))
        assert accuracy(model, res.x_adv, ds.y) < 0.2, suite


@pytest.mark.slow
def test_done_sticker_brings_signs_below_55_percent_with_every_sticker_pixel_on_the_sign():
    """The sticker recipe on the built-in signs, placed on each sign by its corners and clipped to its
    plate. (Drawn on the image, the bars reached off the sign into the sky and changed its outline:
    29% accuracy; kept on the sign, 44% on these 100 signs.)"""
    from robustkit.builtin.signs import signs
    from robustkit.builtin.zoo import load_zoo_model

    model = load_zoo_model("signs-resnet", progress=False)
    ds = signs("test", n=100)
    res = recipe_attack("sticker")(model, ds.x, ds.y, generator=gens(100), objects=ds.objects)
    assert accuracy(model, res.x_adv, ds.y) < 0.55
    off = (ds.objects.mask == 0).expand_as(ds.x)
    assert torch.equal(res.x_adv[off], quantize(ds.x)[off])


@pytest.mark.slow
def test_done_targeted_patch_wins_on_80_percent_of_heldout_images():
    """The shipped patch recipe (10% circle, target 'x-cross', the class benchmarks/patch_targets.py finds
    easiest on the shapes demo model) on that model."""
    from robustkit.builtin.shapes import shapes
    from robustkit.builtin.zoo import load_zoo_model

    model = load_zoo_model("shapes-resnet", progress=False)
    train, test = shapes("train", n=256), shapes("test", n=200)
    attack = recipe_attack("patch")
    assert attack.size == 0.1 and attack.rotation_max > 0
    fitted = attack.fit(model, train.x, train.y, generator=torch.Generator().manual_seed(0))
    keep = test.y != attack.target_class
    res = fitted(model, test.x[keep], test.y[keep], generator=gens(int(keep.sum())))
    assert res.success.float().mean() >= 0.8
    assert res.metrics["placement_success_rate"].mean() >= 0.8
