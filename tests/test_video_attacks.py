"""Video attacks: data contract (bounds, eps = 0, model state, seeds), their geometry, and that each one
lowers the accuracy of the built-in video model."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from robustkit.attacks import ATTACKS, create_attack
from robustkit.builtin.shapes_video import shapes_video
from robustkit.builtin.zoo import load_zoo_model
from robustkit.errors import ConfigError, InputError
from robustkit.evaluation.suite import load_suite
from robustkit.functional.random import sample_generators
from robustkit.functional.video import border_mask, drop_index, frame_metrics, shift_index
from robustkit.models.normalized import Normalized
from robustkit.models.video import SmallVideoNet
from robustkit.report.animation import clip_animation

VIDEO_ATTACKS = (
    "video-pgd",
    "sparse-frames",
    "flicker",
    "video-roa",
    "framing",
    "salt-pepper",
    "video-patch",
)
FAST = {
    "video-pgd": {},
    "sparse-frames": {"steps": 5},
    "flicker": {"steps": 10},
    "video-roa": {"steps": 5, "candidates": 3},
    "framing": {"steps": 5},
    "salt-pepper": {"pixels": 20, "rounds": 2},
    "video-patch": {"max_iter": 3, "batch_size": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny clips: see conftest.one_thread


@pytest.fixture(scope="module")
def model():
    return load_zoo_model("shapes-video-r3d", progress=False)


@pytest.fixture(scope="module")
def data():
    test = shapes_video("test", n=32)
    return test.x, test.y


def gens(n: int, seed: int = 0):
    return sample_generators(seed, range(n))


def tiny_bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Normalized(SmallVideoNet(num_classes=8, width=4), (0.5,) * 3, (0.25,) * 3)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", VIDEO_ATTACKS)
def test_every_video_attack_is_registered_for_video_and_refuses_images(name):
    attack = create_attack(name, **FAST[name])
    assert type(attack).input_kind == "video"
    with pytest.raises(InputError, match=r"\(B, C, T, H, W\)"):
        attack(tiny_bn_model(), torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))


@pytest.mark.parametrize("name", VIDEO_ATTACKS)
def test_attacks_leave_model_state_and_global_rng_untouched(name):
    model = tiny_bn_model().train()  # train mode: BatchNorm would update its statistics if run carelessly
    model.model.stem[0].weight.grad = torch.ones_like(model.model.stem[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(3, 3, 8, 32, 32), torch.tensor([0, 1, 2])
    rng = torch.random.get_rng_state()
    result = create_attack(name, **FAST[name])(model, x, y, generator=gens(3))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.model.stem[0].weight.grad, torch.ones_like(model.model.stem[0].weight))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    for key in ("frame_linf_mean", "frame_linf_max", "frames_changed"):
        assert result.metrics[key].shape == (3,)


@pytest.mark.parametrize(
    "norm, eps, kw",
    [
        ("Linf", 4 / 255, {}),
        ("L2", 0.5, {}),
        ("Linf", 4 / 255, {"shared_frames": True}),
        ("L2", 0.5, {"shared_frames": True}),
    ],
)
def test_video_pgd_respects_the_clip_level_bound_and_the_box(model, data, norm, eps, kw):
    x, y = data[0][:16], data[1][:16]
    attack = create_attack("video-pgd", norm=norm, eps=eps, steps=5, step_size=eps / 2, **kw)
    result = attack(model, x, y, generator=gens(16))
    delta = (result.x_adv - x).flatten(1)
    p = float("inf") if norm == "Linf" else 2
    assert (delta.norm(p=p, dim=1) <= eps * (1 + 1e-5) + 1e-6).all()
    assert attack.threat.within(delta).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_video_pgd_with_eps_zero_returns_the_input(model, data):
    x, y = data
    for kw in ({}, {"shared_frames": True}, {"norm": "L2"}):
        result = create_attack("video-pgd", eps=0.0, **kw)(model, x, y, generator=gens(len(y)))
        assert torch.equal(result.x_adv, x)
        assert not result.success.any()


def test_video_pgd_is_reproducible_from_the_seed_and_independent_of_batching(model, data):
    x, y = data[0][:8], data[1][:8]
    attack = create_attack("video-pgd", eps=4 / 255, steps=3)
    a = attack(model, x, y, generator=gens(8, seed=1)).x_adv
    b = attack(model, x, y, generator=gens(8, seed=1)).x_adv
    c = attack(model, x, y, generator=gens(8, seed=2)).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    halves = torch.cat(
        [
            attack(model, x[i : i + 4], y[i : i + 4], generator=gens(8, seed=1)[i : i + 4]).x_adv
            for i in (0, 4)
        ]
    )
    torch.testing.assert_close(halves, a, atol=1e-6, rtol=0)


def test_shared_frames_adds_one_perturbation_to_every_frame(model):
    x = 0.3 + 0.4 * torch.rand(
        4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0)
    )  # far from 0 and 1
    y = torch.arange(4)
    result = create_attack("video-pgd", eps=8 / 255, steps=3, shared_frames=True)(
        model, x, y, generator=gens(4)
    )
    delta = result.x_adv - x
    torch.testing.assert_close(delta, delta[:, :, :1].expand_as(delta), atol=1e-6, rtol=0)
    assert delta.abs().max() > 0


@pytest.mark.parametrize("selection", ["gradient", "uniform", "first", "random"])
def test_sparse_frames_changes_only_the_chosen_frames(model, data, selection):
    x, y = data[0][:8], data[1][:8]
    result = create_attack("sparse-frames", k=2, selection=selection, steps=3)(model, x, y, generator=gens(8))
    changed = (result.x_adv != x).flatten(3).any(3).any(1)  # (B, T)
    assert (changed.sum(1) <= 2).all() and (changed.sum(1) >= 1).all()
    assert torch.allclose(result.metrics["frames_changed"], changed.float().mean(1))
    if selection == "first":
        assert not changed[:, 2:].any()
    explicit = create_attack("sparse-frames", frames=[1, -1], steps=3)(model, x, y, generator=gens(8))
    ch = (explicit.x_adv != x).flatten(3).any(3).any(1)
    assert not ch[:, [0, 2, 3, 4, 5, 6]].any()


def test_flicker_is_one_bounded_rgb_offset_per_frame(model):
    x = 0.3 + 0.4 * torch.rand(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    result = create_attack("flicker", eps=0.1, steps=5, learning_rate=0.05)(model, x, y, generator=gens(4))
    delta = result.x_adv - x
    per_frame = delta.mean(dim=(3, 4), keepdim=True)
    torch.testing.assert_close(delta, per_frame.expand_as(delta), atol=1e-6, rtol=0)
    assert delta.abs().max() <= 0.1 + 1e-6
    offsets = torch.tensor(result.artifacts["flicker_offsets"])
    assert offsets.shape == (4, 8, 3)


def test_flicker_penalties_make_the_flicker_smoother(model, data):
    x, y = data[0][:4], data[1][:4]
    rough = [
        create_attack(
            "flicker", eps=0.2, steps=20, learning_rate=0.01, regularization=r, loss="ce", kappa=float("inf")
        )(model, x, y, generator=gens(4))
        .metrics["flicker_roughness"]
        .mean()
        for r in (0.0, 500.0)
    ]
    assert rough[1] < rough[0]


def test_video_roa_changes_one_rectangle_of_the_given_area_per_frame(model, data):
    x, y = data[0][:6], data[1][:6]
    for kw in ({"per_frame": True}, {"per_frame": False, "search": "exhaustive", "stride": 8}):
        result = create_attack("video-roa", area=0.1, steps=3, **kw)(model, x, y, generator=gens(6))
        bh, bw = result.artifacts["roa_size"]
        assert abs(bh * bw / (32 * 32) - 0.1) < 0.02
        pos = torch.tensor(result.artifacts["roa_positions"])  # (B, T, 2)
        assert pos.shape == (6, 8, 2)
        changed = (result.x_adv != x).any(1)  # (B, T, H, W)
        for b in range(6):
            for t in range(8):
                top, left = pos[b, t].tolist()
                inside = torch.zeros(32, 32, dtype=torch.bool)
                inside[top : top + bh, left : left + bw] = True
                assert not changed[b, t][~inside].any()
        if not kw["per_frame"]:
            assert (pos == pos[:, :1]).all()
        q = result.x_adv[result.x_adv != x] * 255
        assert torch.allclose(q, q.round(), atol=1e-4)


def test_framing_changes_only_the_border(model, data):
    x, y = data[0][:6], data[1][:6]
    result = create_attack("framing", width=10, steps=5)(model, x, y, generator=gens(6))
    width = result.artifacts["framing_width"]
    assert width == 3  # 10 px at 112 px, scaled to 32 px frames
    changed = (result.x_adv != x).any(1).any(1).any(0)  # (H, W)
    assert not changed[~border_mask(32, 32, width)].any()
    shared = create_attack("framing", width=10, steps=3, shared_frames=True)(model, x, y, generator=gens(6))
    m = border_mask(32, 32, width)
    border = shared.x_adv[..., m]  # (B, C, T, N)
    assert torch.equal(border, border[:, :, :1].expand_as(border))


def test_salt_pepper_sets_at_most_k_pixels_per_frame_to_black_or_white(model, data):
    x, y = data[0][:6], data[1][:6]
    result = create_attack("salt-pepper", pixels=100, reference_size=None, max_fraction=0.02)(
        model, x, y, generator=gens(6)
    )
    changed = (result.x_adv != x).any(1)  # (B, T, H, W)
    assert result.artifacts["pixels_per_frame"] == 20  # 2 % of 1024 caps the 100
    assert (changed.flatten(2).sum(2) <= 20).all()
    # by default, the literature's density: 100 pixels of a 112 x 112 frame, 8 of a 32 x 32 one
    default = create_attack("salt-pepper")(model, x, y, generator=gens(6))
    assert default.artifacts["pixels_per_frame"] == 8
    assert ((default.x_adv != x).any(1).flatten(2).sum(2) <= 8).all()
    values = result.x_adv.permute(0, 2, 3, 4, 1)[changed]  # (N, C)
    assert ((values == 0).all(1) | (values == 1).all(1)).all()


def test_video_patch_fit_records_and_replays_its_eot_draws(model, data):
    x, y = data[0][:8], data[1][:8]
    attack = create_attack("video-patch", max_iter=3, batch_size=4, dynamic=True)
    fitted = attack.fit(model, x, y, generator=torch.Generator().manual_seed(0))
    assert fitted.patch.shape[:2] == (3, 8) and fitted.patch.shape[2] == fitted.patch.shape[3]
    again = attack.fit(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fitted.patch, again.patch)
    result = fitted(model, x, y, generator=gens(8))
    eot = {k: torch.tensor(v) for k, v in result.artifacts["eot_params"].items()}
    replay = fitted.render(x, fitted.patch, eot, temporal=False)
    changed = result.x_adv != x
    torch.testing.assert_close(
        result.x_adv[changed], ((replay * 255).round() / 255)[changed], atol=1e-6, rtol=0
    )
    assert result.artifacts["patch"].shape[0] == 3
    assert "patch" not in attack.params()


def test_video_patch_gradient_reaches_the_patch_through_kornia_and_temporal_eot(model, data):
    x = data[0][:4]
    attack = create_attack("video-patch", dynamic=True, frame_drop=0.5, max_shift=2)
    eot = attack.sample(4, 8, (32, 32), torch.Generator().manual_seed(3), "cpu")
    texture = torch.rand(attack.texture_shape(3, 8, 32, 32), requires_grad=True)
    out = attack.render(x, texture, eot, temporal=True)
    (grad,) = torch.autograd.grad(model(out)[:, 0].sum(), texture)
    assert grad.abs().sum() > 0


def test_temporal_index_helpers():
    keep = torch.tensor([[True, False, False, True, False]])
    assert drop_index(keep).tolist() == [[0, 0, 0, 3, 3]]
    assert shift_index(5, torch.tensor([1, -2])).tolist() == [[0, 0, 1, 2, 3], [2, 3, 4, 4, 4]]


def test_frame_metrics_on_a_known_perturbation():
    delta = torch.zeros(1, 3, 4, 8, 8)
    delta[0, :, 1, :2, :2] = 0.5
    m = frame_metrics(delta)
    assert float(m["frames_changed"]) == 0.25
    assert float(m["frame_linf_max"]) == 0.5
    assert abs(float(m["frame_linf_mean"]) - 0.125) < 1e-7
    assert abs(float(m["pixels_changed"]) - 4 / 64 / 4) < 1e-7


def test_bad_configuration_is_a_config_error():
    for name, kw in [
        ("video-pgd", {"eps": 2.0}),
        ("sparse-frames", {"selection": "gradiant"}),
        ("video-roa", {"area": 1.5}),
        ("framing", {"placement": "inside"}),
        ("salt-pepper", {"max_fraction": 0}),
        ("video-patch", {"frame_drop": 1.0}),
    ]:
        with pytest.raises(ConfigError):
            create_attack(name, **kw)
    with pytest.raises(ConfigError, match="did you mean"):
        create_attack("video-pgd", shared_frame=True)


def test_video_recipe_loads_with_the_literature_settings():
    suite = load_suite("video")
    by_name = {e.name: e for e in suite.entries}
    pgd = by_name["video-pgd-linf"].attack
    assert (pgd.eps, pgd.step_size, pgd.steps) == (4 / 255, 1 / 255, 5)
    assert by_name["video-roa"].attack.area == 0.1
    assert by_name["framing"].attack.width == 10
    assert by_name["salt-pepper"].attack.pixels == 100 and by_name["salt-pepper"].attack.reference_size == 112
    assert {e.attack_key for e in suite.entries} == set(VIDEO_ATTACKS)
    assert all(k in ATTACKS for k in VIDEO_ATTACKS)


# ----------------------------------------------------------------------------- effectiveness
@pytest.mark.parametrize(
    "name, kw",
    [
        ("video-pgd", {"eps": 4 / 255, "step_size": 1 / 255, "steps": 5}),
        ("video-pgd", {"eps": 4 / 255, "step_size": 1 / 255, "steps": 5, "shared_frames": True}),
        ("video-pgd", {"norm": "L2", "eps": 1.0, "step_size": 0.25, "steps": 5}),
        ("sparse-frames", {"eps": 16 / 255, "step_size": 4 / 255, "steps": 10, "k": 1}),
        ("flicker", {"eps": 0.25, "steps": 30, "learning_rate": 0.02}),
        ("video-roa", {"steps": 5, "candidates": 3}),
        ("framing", {"steps": 10, "learning_rate": 0.1}),
        ("salt-pepper", {}),
        ("video-patch", {"max_iter": 20, "batch_size": 16, "learning_rate": 0.1}),
    ],
)
def test_each_video_attack_lowers_the_accuracy_of_the_built_in_model(model, data, name, kw):
    x, y = data
    clean = accuracy(model, x, y)
    assert clean >= 0.95
    attack = create_attack(name, **kw)
    if name == "video-patch":
        train = shapes_video("train", n=64)
        attack = attack.fit(model, train.x, train.y, generator=torch.Generator().manual_seed(0))
    result = attack(model, x, y, generator=gens(len(y)))
    robust = accuracy(model, result.x_adv, y)
    assert robust < clean - 0.1, (name, clean, robust)
    with torch.no_grad():  # claimed successes are real
        assert (model(result.x_adv).argmax(1) != y)[result.success].all()


@pytest.mark.parametrize(
    "name, kw",
    [("apgd-ce", {"steps": 3}), ("apgd-t", {"steps": 3, "n_targets": 2}), ("fab-t", {"steps": 3, "n_targets": 2}),
     ("square", {"queries": 20}), ("autoattack", {"steps": 3, "queries": 10, "n_targets": 2})],
)  # fmt: skip
def test_autoattack_stages_run_on_clips(model, data, name, kw):
    """The AutoAttack ensemble and each of its stages take (B, C, T, H, W) clips as they are."""
    x, y = data[0][:4], data[1][:4]
    result = create_attack(name, eps=2 / 255, **kw)(model, x, y, generator=gens(4))
    assert result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= 2 / 255 + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y)[result.success].all()


def test_sanity_checks_run_on_clips(model, data):
    from robustkit.evaluation.sanity import run_sanity_checks

    findings = run_sanity_checks(model, data[0][:8], data[1][:8], context={})
    assert findings
    assert not [f for f in findings if "could not run" in f.evidence]
    assert all(f.status == "pass" for f in findings), findings


# ----------------------------------------------------------------------------- animation
@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_clip_animation_shows_clean_adversarial_and_difference(fmt):
    clean = torch.rand(3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    adv = (clean + 0.01).clamp(0, 1)
    blob = clip_animation(clean, adv, format=fmt)
    assert blob == clip_animation(clean, adv, format=fmt)  # a pure function
    with Image.open(io.BytesIO(blob)) as im:
        assert im.format == fmt.upper()
        assert im.n_frames == 5
        assert im.size[1] >= 96 and im.size[0] > 3 * im.size[1]
    u8 = clip_animation(
        (clean * 255).round().to(torch.uint8), (adv * 255).round().to(torch.uint8), amplify=10
    )
    assert u8[:3] == b"GIF"
    with pytest.raises(InputError):
        clip_animation(clean[:, 0], adv[:, 0])


# ----------------------------------------------------------------------------- end to end
def test_robustkit_evaluate_runs_a_video_suite_through_the_cli(model, tmp_path):
    """``robustkit evaluate --data shapes-video --suite <video recipe>``: 5-D batches through the runner,
    claimed successes confirmed, clips animated in the report. (The universal video patch goes through
    the runner's fit path in ``robustkit evaluate --suite video``; benchmarks/video_attacks.py.)"""
    import json

    from robustkit.cli import main

    recipe = tmp_path / "tiny-video.yaml"
    recipe.write_text(
        "name: tiny-video\ndescription: small video suite for the CLI test\nattacks:\n"
        "  - {attack: video-pgd, eps: 4/255, step_size: 2/255, steps: 2}\n"
        "  - {attack: salt-pepper, pixels: 20, rounds: 1}\n"
    )
    args = ["evaluate", "--data", "shapes-video", "--model", "shapes-video-r3d", "--suite", str(recipe)]
    code = main([*args, "--limit", "8", "--out", str(tmp_path), "--name", "v", "--quiet", "--device", "cpu"])
    assert code == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["n_samples"] == 8 and summary["clean_accuracy"] >= 0.85
    rows = {a["attack"]: a for a in summary["attacks"]}
    assert set(rows) == {"video-pgd", "salt-pepper"}
    assert all(
        r["kind"] == "video" and r["complete"] and r["claimed_not_confirmed"] == 0 for r in rows.values()
    )
    assert rows["video-pgd"]["robust_accuracy"] < summary["clean_accuracy"]
    assert "data:image/gif" in (tmp_path / "v" / "report.html").read_text()
