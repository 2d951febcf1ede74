"""PGD and FGSM: the foundation's properties on tiny problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustkit
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("norm,p", [("Linf", float("inf")), ("L2", 2.0)])
@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_bounds_and_box(tiny_model, tiny_batch, name, norm, p):
    x, y = tiny_batch
    eps = 8 / 255 if norm == "Linf" else 0.5
    res = robustkit.create_attack(name, norm=norm, eps=eps)(
        tiny_model, x, y, generator=torch.Generator().manual_seed(1)
    )
    delta = (res.x_adv - x).flatten(1).norm(p=p, dim=1)
    assert (delta <= eps + 1e-5).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and res.success.dtype == torch.bool


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_eps_zero_is_identity(tiny_model, tiny_batch, name):
    x, y = tiny_batch
    res = robustkit.create_attack(name, eps=0.0)(tiny_model, x, y)
    assert torch.equal(res.x_adv, x)


def test_model_state_untouched(tiny_batch):
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet().train()  # training mode: BN would update running stats if not restored
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    grad_before = model.fc.weight.grad.clone()
    x, y = tiny_batch
    robustkit.create_attack("pgd", eps=8 / 255, steps=3)(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model.fc.weight.grad, grad_before)
    assert model.features[0].weight.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_no_parameter_gradients(tiny_model, tiny_batch):
    x, y = tiny_batch
    robustkit.create_attack("pgd", steps=2)(tiny_model, x, y)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_fixed_seed_reproduces(tiny_model, tiny_batch):
    x, y = tiny_batch
    atk = robustkit.create_attack("pgd", steps=3, random_start=True)
    a = atk(tiny_model, x, y, generator=torch.Generator().manual_seed(5)).x_adv
    b = atk(tiny_model, x, y, generator=torch.Generator().manual_seed(5)).x_adv
    c = atk(tiny_model, x, y, generator=torch.Generator().manual_seed(6)).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_of_n_equals_n_batches_of_one(tiny_model, tiny_batch):
    x, y = tiny_batch
    atk = robustkit.create_attack("pgd", steps=3, random_start=True, restarts=2)
    full = atk(tiny_model, x, y, generator=sample_generators(0, range(len(x)))).x_adv
    singles = torch.cat(
        [
            atk(tiny_model, x[i : i + 1], y[i : i + 1], generator=sample_generators(0, [i])).x_adv
            for i in range(len(x))
        ]
    )
    assert torch.allclose(full, singles, atol=1e-6)


def test_robust_accuracy_non_increasing_in_eps(shapes_model, shapes_test):
    x, y = shapes_test.x[:100], shapes_test.y[:100]
    accs = []
    for eps in [0, 1, 2, 4, 8]:
        res = robustkit.create_attack("pgd", eps=eps / 255, steps=10)(
            shapes_model, x, y, generator=sample_generators(0, range(100))
        )
        accs.append(_acc(shapes_model, res.x_adv, y))
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < 0.1 < accs[0]


def test_pgd_at_least_as_strong_as_fgsm(shapes_model, shapes_test):
    x, y = shapes_test.x[:100], shapes_test.y[:100]
    for eps in [1 / 255, 2 / 255]:
        fgsm = _acc(shapes_model, robustkit.create_attack("fgsm", eps=eps)(shapes_model, x, y).x_adv, y)
        pgd = _acc(
            shapes_model,
            robustkit.create_attack("pgd", eps=eps)(
                shapes_model, x, y, generator=torch.Generator().manual_seed(0)
            ).x_adv,
            y,
        )
        assert pgd <= fgsm


def test_targeted_reaches_target(shapes_model, shapes_test):
    x, y = shapes_test.x[:40], shapes_test.y[:40]
    target = (y + 1) % 10
    res = robustkit.create_attack("pgd", eps=16 / 255, steps=20, targeted=True)(
        shapes_model, x, y, target=target
    )
    with torch.no_grad():
        hit = (shapes_model(res.x_adv).argmax(1) == target).float().mean()
    assert hit > 0.8
    assert torch.equal(res.success, shapes_model(res.x_adv).argmax(1) == target)


def test_restarts_only_on_unbroken(tiny_batch):
    calls = []

    class Spy(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            # class 0 wins unless the first pixel is bright: samples with bright pixels are broken at once
            s = x[:, 0, 0, 0]
            return torch.stack([torch.full_like(s, 0.5), s * 10 - 9], 1)

    x = torch.full((4, 3, 4, 4), 0.5)
    x[:2, 0, 0, 0] = 0.99
    y = torch.zeros(4, dtype=torch.long)
    robustkit.create_attack("pgd", eps=1 / 255, steps=2, restarts=3)(Spy(), x, y)
    assert calls[:3] == [4, 4, 4] and calls[3:] == [2] * (len(calls) - 3)


def test_linear_model_closed_form():
    """On a linear binary model FGSM-Linf is optimal: logit gap falls by exactly eps * ||w||_1."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.rand(5, 3, 2, 2) * 0.5 + 0.25
    y = torch.zeros(5, dtype=torch.long)
    eps = 0.05
    res = robustkit.create_attack("fgsm", eps=eps)(lin, x, y)
    w = lin[1].weight
    gap = lambda z: (lin(z) @ torch.tensor([1.0, -1.0])).detach()  # noqa: E731
    assert torch.allclose(
        gap(x) - gap(res.x_adv), torch.full((5,), eps * float((w[0] - w[1]).abs().sum().detach())), atol=1e-5
    )


def test_bad_configuration_is_config_error():
    with pytest.raises(ConfigError, match="eps"):
        robustkit.create_attack("pgd", eps=-1)
    with pytest.raises(ConfigError, match="steps"):
        robustkit.create_attack("pgd", steps=0)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        robustkit.create_attack("pgd", stpes=3)
    with pytest.raises(ConfigError, match="did you mean 'pgd'"):
        robustkit.create_attack("pdg")
    with pytest.raises(ConfigError, match="/255"):
        robustkit.create_attack("pgd", eps=8)


def test_input_validation(tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robustkit.create_attack("pgd")(
            tiny_model, torch.full((2, 3, 8, 8), 2.0), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="shape"):
        robustkit.create_attack("pgd")(tiny_model, torch.rand(3, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have shape"):
        robustkit.create_attack("pgd")(tiny_model, torch.rand(2, 3, 8, 8), torch.zeros(3, dtype=torch.long))
