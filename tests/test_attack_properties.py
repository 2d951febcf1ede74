"""Registry-wide properties of every Lp attack (every registered attack with an ``eps`` field).

For each attack, at tiny budgets on a tiny model (images: 3x16x16 conv net with BatchNorm; video:
3x4x8x8 Conv3d net): the result stays in the [0, 1] box and the eps ball of its threat model, the
same per-sample generators give the same result, eps = 0 returns the input unchanged, the model's
modes / requires_grad / .grad / buffers are bit-identical afterwards (also for a model left in
training mode, whose BatchNorm would otherwise update its statistics), and no parameter gradient
is accumulated. Physical and patch attacks (no eps) have their own tests.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from robustkit.attacks import ATTACKS, create_attack
from robustkit.functional.projection import flat_norm
from robustkit.functional.random import sample_generators
from robustkit.registry import dataclass_fields

from .conftest import TinyNet

# the smallest budget of every field that sets one
SMALL = {"steps": 3, "queries": 12, "n_targets": 2, "restarts": 1, "sync_every": 4}
EPS = {"Linf": 8 / 255, "L2": 0.5}


def lp_attacks() -> list[str]:
    return [n for n in ATTACKS.names() if "eps" in dataclass_fields(ATTACKS.get(n))]


def norms(name: str) -> list[str]:
    return ["Linf", "L2"] if "norm" in dataclass_fields(ATTACKS.get(name)) else ["Linf"]


CASES = [(name, norm) for name in lp_attacks() for norm in norms(name)]


def is_video(name: str) -> bool:
    return getattr(ATTACKS.get(name), "input_kind", None) == "video"


def build(name: str, norm: str, eps: float | None = None):
    fields = dataclass_fields(ATTACKS.get(name))
    params = {k: v for k, v in SMALL.items() if k in fields}
    if "norm" in fields:
        params["norm"] = norm
    params["eps"] = EPS[norm] if eps is None else eps
    if name == "autoattack":
        params["queries"] = 12
    return create_attack(name, **params)


class TinyVideo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def problem(name: str, train: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if is_video(name):
        model, x = TinyVideo(), torch.rand(3, 3, 4, 8, 8, generator=g)
    else:
        model, x = TinyNet(), torch.rand(4, 3, 16, 16, generator=g)
    # non-trivial BatchNorm statistics, then the requested mode
    with torch.no_grad():
        model.train()(torch.rand_like(x))
    model.train(train)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # clean-correct labels, so the attacks actually work
    model.train(train)
    return model, x, y


def run(attack, model, x, y, seed: int = 0):
    return attack(model, x, y, generator=sample_generators(seed, range(x.shape[0])))


def test_the_registry_has_the_ensemble_attacks():
    names = set(lp_attacks())
    assert {"pgd", "fgsm", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square", "autoattack"} <= names
    assert len(CASES) >= 18


@pytest.mark.parametrize("name,norm", CASES)
def test_bounds_shape_and_seed_reproducibility(name, norm):
    model, x, y = problem(name)
    attack = build(name, norm)
    res, again = run(attack, model, x, y, seed=3), run(attack, model, x, y, seed=3)
    assert torch.equal(res.x_adv, again.x_adv), name
    assert torch.equal(res.success, again.success)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    p = float("inf") if norm == "Linf" else 2.0
    assert (flat_norm(res.x_adv - x, p) <= EPS[norm] * (1 + 1e-5) + 1e-6).all(), name
    # a claimed success is a real misclassification of the returned example
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert not (res.success & (pred == y)).any(), name


@pytest.mark.parametrize("name,norm", CASES)
def test_eps_zero_is_identity(name, norm):
    model, x, y = problem(name)
    res = run(build(name, norm, eps=0.0), model, x, y)
    assert torch.equal(res.x_adv, x), name
    assert not res.success.any()


@pytest.mark.parametrize("name", lp_attacks())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_model_state_untouched_and_no_parameter_grads(name, train):
    model, x, y = problem(name, train=train)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a frozen layer stays frozen
    params[-1].grad = torch.full_like(params[-1], 0.5)  # a pre-existing gradient is kept as it was
    before = copy.deepcopy(model.state_dict())
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    run(build(name, norms(name)[0]), model, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), (name, k)
    assert flags == [
        (m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()
    ]
    assert torch.equal(params[-1].grad, torch.full_like(params[-1], 0.5))
    assert all(p.grad is None for p in params[:-1]), name


def test_attacks_are_frozen_configuration():
    attack = build("apgd-ce", "Linf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.eps = 1.0  # type: ignore[misc]
    assert attack.replace(eps=0.1).eps == 0.1 and attack.eps == EPS["Linf"]
