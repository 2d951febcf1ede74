"""APGD, FAB and Square on problems with known answers (a linear classifier, float64); BPDA and EOT.

For a linear model ``f(x) = W x + b`` the strongest L-inf attack is known in closed form: a sample
can be misclassified as class j exactly when the largest achievable change of the margin
``(w_j - w_y) . delta`` over the eps ball intersected with the [0, 1] box exceeds the clean margin.
The attacks must break every sample that is breakable with some slack and, being inside the threat
model, can never break one that is not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.attacks.apgd import checkpoints
from robustkit.attacks.bpda import BPDA
from robustkit.attacks.expectation import Expectation
from robustkit.attacks.square import p_fraction
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators

EPS = 0.015


def linear_problem(n: int = 48, k: int = 5, d: int = 3 * 6 * 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64) * 0.1)
        model[1].bias.zero_()
    x = torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def best_margin_change(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """max_j [ max_{delta} (w_j - w_y) . delta - (f_y(x) - f_j(x)) ] over the L-inf ball and the box."""
    w = model[1].weight
    flat = x.flatten(1)
    lo, hi = (-flat).clamp(min=-eps), (1 - flat).clamp(max=eps)  # per-coordinate range of delta
    with torch.no_grad():
        logits = model(x)
        w = w.detach()
    out = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype)
    for j in range(w.shape[0]):
        d = w[j][None] - w[y]  # (n, d)
        gain = torch.maximum(d * lo, d * hi).sum(1)
        value = gain - (logits.gather(1, y[:, None])[:, 0] - logits[:, j])
        out = torch.where(y == j, out, torch.maximum(out, value))
    return out


@pytest.fixture(scope="module")
def linear():
    model, x, y = linear_problem()
    best = best_margin_change(model, x, y, EPS)
    assert 0.2 < float((best > 0).double().mean()) < 0.8  # a mix of breakable and safe samples
    return model, x, y, best


@pytest.mark.parametrize(
    "name,params,fraction",
    [
        ("apgd-ce", {"steps": 20}, 0.9),
        ("apgd-dlr", {"steps": 20}, 1.0),
        ("apgd-t", {"steps": 20, "n_targets": 4}, 1.0),
        ("fab-t", {"steps": 20, "n_targets": 4}, 1.0),
        ("square", {"queries": 300}, 0.9),
    ],
)
def test_breaks_every_breakable_sample_of_a_linear_model(linear, name, params, fraction):
    """The margin-based attacks find all of them; cross-entropy (not the margin) and random search
    (Square) may miss a few close to the limit."""
    model, x, y, best = linear
    res = create_attack(name, norm="Linf", eps=EPS, **params)(
        model, x, y, generator=sample_generators(0, range(len(x)))
    )
    margin = best_margin_change(model, x, y, EPS)
    clearly = margin > 0.02 * margin.abs().max()
    found = float(res.success[clearly].double().mean())
    assert found >= fraction, f"{name} missed {int((~res.success & clearly).sum())} breakable samples"
    assert not res.success[best < 0].any()  # impossible inside the threat model
    assert (res.x_adv - x).abs().max() <= EPS + 1e-12


def test_checkpoints_follow_the_reference_schedule():
    # the reference code: first check after 22 % of the iterations, the interval shrinking by 3 % down to 6 %
    assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert checkpoints(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert all(0 <= c < 5 for c in checkpoints(5))


def test_square_schedule_is_the_original_rescaled():
    assert p_fraction(0, 0.8, 10000) == 0.8
    assert p_fraction(11, 0.8, 10000) == 0.4
    assert p_fraction(9000, 0.8, 10000) == 0.8 / 512
    assert p_fraction(100, 0.8, 1000) == p_fraction(1000, 0.8, 10000)  # stretched to the budget


def test_targeted_call_reaches_the_given_target(linear):
    model, x, y, _ = linear
    target = (y + 1) % 5
    res = create_attack("apgd", loss="ce", norm="Linf", eps=0.5, steps=20)(model, x, y, target=target)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert res.success.float().mean() > 0.9
    assert torch.equal(pred[res.success], target[res.success])


@pytest.mark.parametrize("name", ["apgd", "fab", "pgd"])
def test_a_targeted_criterion_is_the_same_as_a_target(linear, name):
    """``criterion=TargetedMisclassification(t)`` and ``target=t`` are one call; a margin asks for clear
    successes only; two different targets are refused."""
    from robustkit.attacks.criteria import Misclassification, TargetedMisclassification

    model, x, y, _ = linear
    target = (y + 1) % 5
    fields = {"loss": "ce"} if name == "apgd" else {"targeted": True} if name == "pgd" else {}
    attack = create_attack(name, norm="Linf", eps=0.2, steps=10, **fields)
    gens = lambda: sample_generators(2, range(len(x)))  # noqa: E731
    by_target = attack(model, x, y, target=target, generator=gens())
    by_criterion = attack(model, x, y, criterion=TargetedMisclassification(target), generator=gens())
    assert torch.equal(by_target.x_adv, by_criterion.x_adv) and torch.equal(
        by_target.success, by_criterion.success
    )
    assert by_target.success.any()
    exact = attack(model, x, y, criterion=Misclassification(margin=0.0), generator=gens())
    plain = attack(model, x, y, generator=gens())
    assert torch.equal(exact.x_adv, plain.x_adv)  # the default criterion
    with pytest.raises(ConfigError, match="different targets"):
        attack(model, x, y, target=y, criterion=TargetedMisclassification(target))
    with pytest.raises(ConfigError, match="criterion"):
        attack(model, x, y, criterion="misclassification")


def test_l2_apgd_stays_in_the_ball_and_beats_a_weaker_budget(linear):
    model, x, y, _ = linear
    gens = lambda: sample_generators(1, range(len(x)))  # noqa: E731
    big = create_attack("apgd-ce", norm="L2", eps=1.0, steps=20)(model, x, y, generator=gens())
    small = create_attack("apgd-ce", norm="L2", eps=0.25, steps=20)(model, x, y, generator=gens())
    assert (big.x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-9
    assert big.success.sum() >= small.success.sum() > 0


def test_sample_result_does_not_depend_on_its_batch(linear):
    model, x, y, _ = linear
    attack = create_attack("apgd-dlr", norm="Linf", eps=EPS, steps=10)
    full = attack(model, x, y, generator=sample_generators(0, range(len(x)))).x_adv
    half = attack(model, x[10:30], y[10:30], generator=sample_generators(0, range(10, 30))).x_adv
    assert torch.allclose(full[10:30], half, atol=1e-9)


def test_eot_samples_multiply_the_gradient_passes(linear):
    model, x, y, _ = linear
    one = create_attack("apgd-ce", eps=0.01, steps=5)(model, x[:4], y[:4]).counters["backward"]
    three = create_attack("apgd-ce", eps=0.01, steps=5, eot_samples=3)(model, x[:4], y[:4]).counters[
        "backward"
    ]
    assert three == 3 * one


def test_dlr_needs_enough_classes_and_bad_fields_are_config_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="DLR"):
        create_attack("apgd-t", eps=0.1, steps=2)(model, x, y)
    for bad in ({"steps": 0}, {"rho": 2.0}, {"norm": "L3"}, {"steps": 1.5}):
        with pytest.raises(ConfigError):
            create_attack("apgd-ce", **bad)
    with pytest.raises(ConfigError):
        create_attack("square", queries=0)


@pytest.mark.parametrize("shape", [(2, 3, 12, 20), (2, 3, 4, 10, 8)], ids=["non-square", "video"])
def test_square_on_non_square_images_and_video(shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3) if len(shape) == 4 else nn.Conv3d(3, 4, 3)
    pool = nn.AdaptiveAvgPool2d(1) if len(shape) == 4 else nn.AdaptiveAvgPool3d(1)
    model = nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(4, 5)).eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    for norm, eps in (("Linf", 8 / 255), ("L2", 0.5)):
        res = create_attack("square", norm=norm, eps=eps, queries=40)(
            model, x, y, generator=sample_generators(0, range(2))
        )
        p = float("inf") if norm == "Linf" else 2
        assert res.x_adv.shape == x.shape
        assert (res.x_adv - x).flatten(1).norm(p=p, dim=1).max() <= eps * (1 + 1e-5)
        assert res.metrics["queries"].shape == (2,)
        assert (res.x_adv != x).any()


def quantize(x: torch.Tensor) -> torch.Tensor:
    return (x * 8).round() / 8  # non-differentiable: zero gradient almost everywhere


def test_bpda_restores_gradients_through_a_non_differentiable_step(linear):
    model, x, y, best = linear
    masked = _Chain(quantize, model)
    defended = _Chain(BPDA(quantize), model)
    with torch.no_grad():
        assert torch.equal(masked(x), defended(x))  # BPDA leaves the forward pass exact
    attack = create_attack("apgd-dlr", norm="Linf", eps=0.1, steps=20)
    gens = lambda: sample_generators(0, range(len(x)))  # noqa: E731
    stalled = attack(masked, x, y, generator=gens()).success.float().mean()
    through = attack(defended, x, y, generator=gens()).success.float().mean()
    assert through > stalled + 0.3, (float(stalled), float(through))


def test_bpda_backward_variants():
    x = torch.rand(2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(BPDA(quantize)(x).sum(), x)
    assert torch.equal(g, torch.ones_like(x))  # identity
    (g,) = torch.autograd.grad(BPDA(quantize, approx=lambda z: 2 * z)(x).sum(), x)
    assert torch.equal(g, torch.full_like(x, 2.0))
    (g,) = torch.autograd.grad(BPDA(quantize, backward=lambda z, go: 3 * go)(x).sum(), x)
    assert torch.equal(g, torch.full_like(x, 3.0))
    assert torch.equal(BPDA(quantize, backward=lambda z, go: go)(x), quantize(x))
    with pytest.raises(ConfigError, match="shape"):
        BPDA(lambda z: z[:, :2])(x)
    with pytest.raises(ConfigError, match="either"):
        BPDA(quantize, approx=quantize, backward=lambda z, go: go)


def test_expectation_averages_a_stochastic_model(linear):
    model, x, y, _ = linear
    torch.manual_seed(0)
    noisy = _Chain(lambda z: z + 0.3 * torch.randn_like(z), model)
    mean = Expectation(noisy, samples=200)
    with torch.no_grad():
        exact = model(x)
        assert (mean(x) - exact).abs().max() < (noisy(x) - exact).abs().max() / 5
    with pytest.raises(ConfigError):
        Expectation(noisy, samples=0)


class _Chain(nn.Module):
    def __init__(self, first, model: nn.Module) -> None:
        super().__init__()
        self.first, self.model = first, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.first(x))


def test_a_targeted_criterion_on_an_untargeted_attack_is_refused(linear):
    """An untargeted PGD would ignore the target and report untargeted successes as if they hit it."""
    from robustkit.attacks.criteria import TargetedMisclassification

    model, x, y, _ = linear
    attack = create_attack("pgd", norm="Linf", eps=0.2, steps=3)
    with pytest.raises(ConfigError, match="targeted=True"):
        attack(model, x, y, criterion=TargetedMisclassification((y + 1) % 5))
