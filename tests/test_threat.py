"""Threats own their geometry: in-place projection, random starts from per-sample generators, steps."""

from __future__ import annotations

import pytest
import torch

from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators
from robustkit.threat import L0, L2, Linf, Mask, make_threat


def batch(shape=(4, 3, 8, 8), seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("threat", [Linf(eps=8 / 255), L2(eps=0.5)])
def test_project_in_place_into_ball_and_box(threat):
    x = batch()
    far = x + 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = threat.project_(far, x)
    assert out.data_ptr() == far.data_ptr()
    assert bool(threat.within(out - x).all())
    assert out.min() >= 0 and out.max() <= 1
    again = out.clone()
    threat.project_(again, x)
    assert torch.allclose(again, out, atol=1e-6)


def test_linf_projection_is_idempotent_bit_for_bit_and_uses_scratch():
    x, threat = batch(), Linf(eps=4 / 255)
    point = threat.project_(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)), x)
    before = point.clone()
    work = torch.empty_like(x)
    threat.project_(point, x, work=work)
    assert torch.equal(point, before)
    assert torch.equal(work, (x + threat.eps).clamp(max=1.0))  # the bounds lived in the scratch buffer


@pytest.mark.parametrize("threat", [Linf(eps=8 / 255), L2(eps=0.5), L0(eps=5)])
def test_random_start_per_sample_is_independent_of_the_batch(threat):
    x = batch()
    whole = threat.random_start(x, sample_generators(7, range(4)))
    parts = torch.cat([threat.random_start(x[i : i + 1], sample_generators(7, [i])) for i in range(4)])
    assert torch.equal(whole, parts)
    assert bool(threat.within(threat.clip(x, whole - x)).all())


def test_random_start_with_mask_leaves_the_rest_exact():
    x = torch.rand(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 4, 1, 1)
    mask[:, :, 1] = 1
    start = Linf(eps=8 / 255).random_start(x, torch.Generator().manual_seed(0), mask)
    assert torch.equal(start[:, :, [0, 2, 3]], x[:, :, [0, 2, 3]])
    assert not torch.equal(start[:, :, 1], x[:, :, 1])


@pytest.mark.parametrize("threat", [Linf(eps=8 / 255), L2(eps=0.5)])
def test_step_leaves_frozen_samples_bit_for_bit(threat):
    x = batch()
    x_adv = threat.project_(threat.random_start(x, torch.Generator().manual_seed(4)), x)
    before = x_adv.clone()
    frozen = torch.tensor([True, False, True, False])
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    threat.step_(x_adv, x, grad, 2 / 255, frozen)
    assert torch.equal(x_adv[frozen], before[frozen])
    assert not torch.equal(x_adv[~frozen], before[~frozen])
    assert bool(threat.within(x_adv - x).all())


@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (3, 3, 4, 8, 8)])
def test_l0_counts_pixels_and_projects_onto_the_budget(shape):
    x, threat = batch(shape), L0(eps=5)
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(6)) * 0.1
    assert bool((threat.norm(delta) == 64).all())  # every pixel changed
    kept = threat.project(delta)
    assert bool((threat.norm(kept) == 5).all()) and bool(threat.within(kept).all())
    # the five largest changes survive unchanged, the rest are reset
    assert torch.equal(kept[kept != 0], delta[kept != 0])
    start = threat.init(x, torch.Generator().manual_seed(8))
    assert bool(threat.within(start).all())
    assert set((x + start)[start != 0].unique().tolist()) <= {0.0, 1.0}  # salt or pepper


def test_mask_confines_the_change():
    x = batch()
    region = torch.zeros(1, 1, 8, 8)
    region[..., 2:5, 2:5] = 1
    threat = Mask(mask=region, eps=0.25)
    moved = threat.project_(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(9)), x)
    outside = (region == 0).expand_as(x)
    assert torch.equal(moved[outside], x[outside])
    assert bool(threat.within(moved - x).all())
    assert not bool(threat.within(torch.full_like(x, 0.01)).any())  # a change outside the region


def test_make_threat_names_the_lp_balls_only():
    assert isinstance(make_threat("linf", 0.1), Linf) and isinstance(make_threat("l2", 1.0), L2)
    with pytest.raises(ConfigError):
        make_threat("L0", 3)


def test_lp_attack_holds_norm_eps_and_threat_once():
    from robustkit.attacks import create_attack
    from robustkit.attacks.lp import LossAttack, LpAttack

    ball = LpAttack(norm="l2", eps=0.5)
    assert isinstance(ball.threat, L2) and ball.threat.eps == 0.5 and not isinstance(ball, LossAttack)
    with pytest.raises(ConfigError):
        LpAttack(norm="L1", eps=0.5)
    for name in ("pgd", "fgsm", "video-pgd", "sparse-frames"):
        attack = create_attack(name, norm="L2", eps=0.25)
        assert isinstance(attack, LpAttack) and attack.threat == L2(eps=0.25)
