"""The broken defenses of the literature (robustkit.defenses.broken) as a test set for adaptive evaluation.

- each defense breaks a naive evaluation the way the literature says (zero gradients, random outputs,
  a flat loss, batch-dependent outputs) while its declared capabilities name real submodules;
- without flags, robustkit's evaluation flags every broken defense (some finding warns or fails) and
  stays quiet on the sound and adversarially trained controls;
- with the flags a researcher would declare, ``robustkit.evaluate`` lands within 5 points of the truth,
  our own strongest adaptive attack (``broken.truth``) on the deployed defense (slow: ``-m slow``).

32 'shapes' test images, L-inf eps 2/255 (the plain model keeps about 40% under APGD there).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit.defenses import broken
from robustkit.defenses.adaptive import adapt
from robustkit.defenses.base import as_defense
from robustkit.functional.losses import margin

EPS = 2 / 255
N = 32
BROKEN = [name for name, case in broken.TEST.items() if case.kind in broken.BROKEN_KINDS]
CONTROLS = [name for name, case in broken.TEST.items() if case.kind not in broken.BROKEN_KINDS]
# The suite of the no-flag runs: a plain 10-step PGD, as a researcher would first try.
PGD = {"name": "pgd-broken", "description": "PGD-10", "attacks": [
    {"attack": "pgd", "norm": "Linf", "eps": EPS, "steps": 10, "random_start": True}]}  # fmt: skip
BUDGET = broken.Budget(
    steps=50, restarts=1, queries=300, eot=20, draws=10, joint_steps=50, step_sizes=(0.25,)
)


@pytest.fixture(scope="module")
def data(shapes_test):
    return shapes_test.x[:N], shapes_test.y[:N]


def build(name: str, base):
    torch.manual_seed(0)
    return broken.CASES[name].factory(base)


def _grad(model, x, y) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(-margin(model(leaf), y).sum(), leaf, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def test_sets_cover_every_kind_with_different_instances():
    for cases in (broken.TEST, broken.HELD_OUT):
        assert {c.kind for c in cases.values()} == set(broken.BROKEN_KINDS) | {
            broken.SOUND,
            broken.ADVERSARIALLY_TRAINED,
        }
    for kind in broken.BROKEN_KINDS:
        test = {n for n, c in broken.TEST.items() if c.kind == kind}
        held = {n for n, c in broken.HELD_OUT.items() if c.kind == kind}
        assert test and held and not test & held, kind


@pytest.mark.parametrize("name", sorted(broken.CASES))
def test_declared_capabilities_name_real_steps_and_keep_the_prediction(name, shapes_model, data):
    x, y = data
    model = build(name, shapes_model)
    caps = broken.CASES[name].capabilities
    for step in caps.non_differentiable:
        model.get_submodule(step)  # raises when the declared name is not a submodule
    adapted = adapt(as_defense(model, capabilities=caps), probe=x[:4])
    torch.manual_seed(1)
    with torch.no_grad():
        acc = (adapted.model(x).argmax(1) == y).float().mean()
    assert acc >= 0.9 or broken.CASES[name].kind == broken.ADVERSARIALLY_TRAINED
    if caps.non_differentiable:  # BPDA (or skipping the head) gives the attack a gradient
        assert _grad(adapted.attack_model, x, y).flatten(1).abs().amax(1).gt(0).all()


@pytest.mark.parametrize("name", ["bit-depth", "jpeg"])
def test_preprocessing_masks_the_gradient(name, shapes_model, data):
    x, y = data
    assert _grad(build(name, shapes_model), x, y).abs().max() == 0


@pytest.mark.parametrize("name", ["clamped-log-probs", "tanh-head"])
def test_saturating_head_flattens_the_loss_and_keeps_the_argmax(name, shapes_model, data):
    x, y = data
    model = build(name, shapes_model)
    with torch.no_grad():
        out, logits = model(x), shapes_model(x)
        noisy = model((x + EPS * torch.randn_like(x).sign()).clamp(0, 1))
    assert torch.equal(out.argmax(1), logits.argmax(1))
    # the loss an attack tracks does not move under a random eps-step on most samples
    flat = (F.cross_entropy(out, y, reduction="none") == F.cross_entropy(noisy, y, reduction="none")).float()
    assert flat.mean() >= 0.5
    assert (_grad(model, x, y).flatten(1).abs().amax(1) == 0).float().mean() >= 0.5


@pytest.mark.parametrize("name", ["random-resize-pad", "gaussian-noise"])
def test_randomized_defense_draws_per_call(name, shapes_model, data):
    x, _ = data
    model = build(name, shapes_model)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("name", ["train-mode-bn", "batch-standardize"])
def test_batch_dependent_defense_depends_on_batch_mates(name, shapes_model, data):
    x, _ = data
    model = build(name, shapes_model)
    with torch.no_grad():
        whole, half = model(x)[:4], model(x[:4])
    assert (whole - half).abs().max() > 1e-3


def test_truth_of_a_plain_model_matches_apgd(shapes_model, data):
    """The truth machinery on the plain model: at least as strong as one APGD-CE run, at most clean."""
    x, y = data
    t = broken.truth(
        "plain", shapes_model, x, y, eps=EPS, budget=broken.Budget(steps=20, restarts=1, queries=50)
    )
    one = robustkit.attacks.create_attack("apgd-ce", eps=EPS, steps=20)(shapes_model, x, y).x_adv
    with torch.no_grad():
        apgd = float((shapes_model(one).argmax(1) == y).float().mean())
    assert t.robust_accuracy <= apgd + 1e-9 and t.robust_accuracy <= t.clean_accuracy
    assert t.robust.shape == y.shape and 0 < t.robust_accuracy < 1


def _flags(summary) -> list[str]:
    """What robustkit said about the model without being told: findings that did not pass, and
    capabilities it detected from the model itself (and then evaluated it for)."""
    detected = [f"detected {d}" for d in (summary.get("defense") or {}).get("detected", [])]
    return [f"{f['name']}: {f['status']}" for f in summary["findings"] if f["status"] != "pass"] + detected


@pytest.mark.parametrize("name", BROKEN + CONTROLS)
def test_without_flags_broken_defenses_are_flagged_and_controls_quiet(name, shapes_model, data, tmp_path):
    x, y = data
    model = build(name, shapes_model)
    result = robustkit.evaluate(
        model, (x, y), PGD, num_classes=10, out=tmp_path, report=False, progress=False, seed=0
    )
    fired = _flags(result.summary)
    if name in BROKEN:
        assert fired, f"{name}: no finding fired; findings: {result.summary['findings']}"
    else:
        assert not fired, f"{name}: a sound control was flagged: {fired}"


@pytest.fixture(scope="module")
def truths(shapes_model, data):
    x, y = data
    return {
        name: broken.truth(name, build(name, shapes_model), x, y, eps=EPS, budget=BUDGET)
        for name in broken.TEST
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(broken.TEST))
def test_adaptive_evaluation_with_flags_is_within_5_points_of_truth(
    name, shapes_model, data, truths, tmp_path
):
    x, y = data
    model = build(name, shapes_model)
    defense = as_defense(model, name=name, capabilities=broken.CASES[name].capabilities)
    result = robustkit.evaluate(
        defense, (x, y), "autoattack-standard", eps=EPS, num_classes=10, out=tmp_path, report=False,
        progress=False, seed=0,
    )  # fmt: skip
    reported, true = result.robust_accuracy, truths[name].robust_accuracy
    assert abs(reported - true) <= 0.05, (
        f"{name}: robustkit {reported:.1%} vs truth {true:.1%} ({truths[name].parts})"
    )
    if name in CONTROLS:
        assert not _flags(result.summary)
