"""Batch semantics: a batch-dependent model (``Precisions(batch_dependent=True)``, ``Judge.whole_batch``)
is attacked only on the whole batch it was given, rows in order; broken rows stay in it, no longer
updated; and with the flag off nothing changes (the attack test files guard the results)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import robustkit
from robustkit.attacks import base as base_mod
from robustkit.attacks import lp as lp_mod
from robustkit.attacks import pgd as pgd_mod
from robustkit.attacks.base import ATTACKS, Held, Judge
from robustkit.attacks.criteria import Misclassification, confirm
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators
from robustkit.models.fastpath import Precisions, make_fastpath
from robustkit.registry import dataclass_fields

B, K, EPS = 8, 5, 2 / 255


class Probe(nn.Module):
    """Test-time BatchNorm (train mode: every output depends on the batch) that records every batch it
    is called on. Row i carries a marker, pixel (0, 0, 0) = (i + 0.5) / B, that the network never
    reads (no gradient moves it, so an attack keeps it within eps of its value): a row out of place is
    seen."""

    def __init__(self, video: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        conv, norm, pool = (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d) if video else (
            nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)  # fmt: skip
        self.net = nn.Sequential(
            conv(3, 8, 3, padding=1), nn.ReLU(), norm(8), pool(2), nn.Flatten(),
            nn.Linear(8 * 2 ** (2 + video), K, bias=False),
        )  # fmt: skip
        self.train()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []  # (input, logits, with gradient)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blind = torch.ones_like(x[:1])
        blind.view(-1)[0] = 0.0
        logits = self.net(x * blind)
        self.calls.append((x.detach().clone(), logits.detach().clone(), torch.is_grad_enabled()))
        return logits

    def rows_in_place(self, x: torch.Tensor) -> bool:
        marker = (x.flatten(1)[:, 0] * B).floor().long()
        return torch.equal(marker, torch.arange(x.shape[0]))


def _batch(video: bool = False) -> tuple[Probe, torch.Tensor, torch.Tensor]:
    model = Probe(video)
    shape = (B, 3, 4, 8, 8) if video else (B, 3, 8, 8)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    x.view(B, -1)[:, 0] = (torch.arange(B) + 0.5) / B
    with torch.no_grad():
        y = model(x).argmax(1)  # every row right on the clean batch
    model.calls.clear()
    return model, x, y


IMAGE_ATTACKS = {
    "fgsm": {},
    "pgd": {"steps": 6, "restarts": 3},
    "apgd": {"steps": 6, "restarts": 2},
    "apgd-ce": {"steps": 6, "restarts": 2},
    "apgd-dlr": {"steps": 6, "restarts": 2},
    "apgd-t": {"steps": 6, "n_targets": 3, "restarts": 2},
    "fab": {"steps": 6, "restarts": 2},
    "fab-t": {"steps": 6, "n_targets": 3, "restarts": 2},
    "square": {"queries": 150, "restarts": 2, "sync_every": 5, "eps": 4 / 255},
    "autoattack": {"steps": 6, "n_targets": 3, "queries": 30},
}
VIDEO_ATTACKS = {
    "video-pgd": {"steps": 4, "restarts": 2, "step_size": 2 / 255},
    "sparse-frames": {"steps": 4, "restarts": 2, "k": 2},
}


def test_every_lp_attack_is_covered():
    lp = {name for name in ATTACKS.names() if {"norm", "eps"} <= set(dataclass_fields(ATTACKS.get(name)))}
    assert lp == set(IMAGE_ATTACKS) | set(VIDEO_ATTACKS)


@pytest.fixture(params=[False, True], ids=["serial", "stack-on-gpu"])
def stacking(request, monkeypatch):
    """On the CPU runs go one by one; ``stack-on-gpu`` makes every attack stack its runs as on CUDA
    (which whole-batch semantics must refuse)."""
    if request.param:
        for mod in (base_mod, lp_mod, pgd_mod):
            monkeypatch.setattr(mod, "stack_in_batch", lambda x: True, raising=False)
    return request.param


@pytest.mark.parametrize("name", [*IMAGE_ATTACKS, *VIDEO_ATTACKS])
def test_whole_batch_calls_the_model_on_the_whole_batch_in_order(name, stacking, one_thread):
    video = name in VIDEO_ATTACKS
    model, x, y = _batch(video)
    attack = robustkit.create_attack(name, **{"eps": EPS, **{**IMAGE_ATTACKS, **VIDEO_ATTACKS}[name]})
    res = attack(model, x, y, precisions=Precisions.single(model, batch_dependent=True),
                 generator=sample_generators(0, range(B)))  # fmt: skip
    sizes = [inp.shape[0] for inp, _, _ in model.calls]
    assert sizes and set(sizes) == {B}, f"{name} called the model with batches of {sorted(set(sizes))}"
    assert all(model.rows_in_place(inp) for inp, _, _ in model.calls), f"{name} reordered rows"
    assert res.x_adv.shape == x.shape and (res.x_adv - x).abs().max() <= attack.eps + 1e-6
    assert model.training  # attacked in the mode it was given


@pytest.mark.parametrize("name", ["autoattack", "apgd-t", "square"])
def test_the_probe_sees_subsets_and_stacks_without_the_flag(name, monkeypatch, one_thread):
    """Without the flag the same attacks run subsets (and on CUDA stacked restarts): what the probe
    above would catch."""
    model, x, y = _batch()
    attack = robustkit.create_attack(name, **{"eps": EPS, **IMAGE_ATTACKS[name]})
    attack(model, x, y, generator=sample_generators(0, range(B)))
    assert any(inp.shape[0] < B for inp, _, _ in model.calls), name
    monkeypatch.setattr(lp_mod, "stack_in_batch", lambda x: True)
    model.calls.clear()
    attack(model, x, y, generator=sample_generators(0, range(B)))
    assert name == "square" or any(inp.shape[0] > B for inp, _, _ in model.calls), name


def _frozen_after_breaking(model: Probe, x: torch.Tensor, y: torch.Tensor, *, bounded: bool) -> int:
    """For each row: from the first call that judged it adversarial (``bounded``: a call without
    gradient, within eps: FAB's judgement), every later call sees it at that same input. Returns how
    many rows broke."""
    broke = 0
    for i in range(B):
        first = None
        for j, (inp, logits, grad) in enumerate(model.calls):
            if first is None:
                within = (inp[i] - x[i]).abs().max() <= EPS + 1e-7
                if logits[i].argmax() != y[i] and (not bounded or (within and not grad)):
                    first = inp[i]
                    broke += 1
            else:
                assert torch.allclose(inp[i], first, rtol=0, atol=1e-6 if bounded else 0.0), (i, j)
    return broke


FROZEN = {
    "pgd": IMAGE_ATTACKS["pgd"],
    "apgd-ce": IMAGE_ATTACKS["apgd-ce"],
    "apgd-t": IMAGE_ATTACKS["apgd-t"],
    "square": IMAGE_ATTACKS["square"],
    "fab": IMAGE_ATTACKS["fab"],
    "video-pgd": VIDEO_ATTACKS["video-pgd"],
    "video-pgd-shared": {**VIDEO_ATTACKS["video-pgd"], "shared_frames": True, "eps": 4 / 255},
}


@pytest.mark.parametrize("name", FROZEN)
def test_a_broken_row_is_no_longer_updated(name, one_thread):
    model, x, y = _batch(video=name.startswith("video"))
    attack = robustkit.create_attack(name.removesuffix("-shared"), **{"eps": EPS, **FROZEN[name]})
    res = attack(model, x, y, precisions=Precisions.single(model, batch_dependent=True),
                 generator=sample_generators(0, range(B)))  # fmt: skip
    broke = _frozen_after_breaking(model, x, y, bounded=name == "fab")
    assert broke > 0 and res.success.any()  # the property was exercised


def test_autoattack_holds_broken_rows_at_their_example_in_later_stages(one_thread):
    model, x, y = _batch()
    attack = robustkit.create_attack("autoattack", eps=EPS, **IMAGE_ATTACKS["autoattack"])
    res = attack(model, x, y, precisions=Precisions.single(model, batch_dependent=True),
                 generator=sample_generators(0, range(B)))  # fmt: skip
    cascade = res.artifacts["cascade"]
    # the model calls, stage by stage: the clean check, each stage and its recheck, the final recheck
    ends, at = [], 1
    for entry in cascade:
        at += entry["counters"].get("forward", 0) + (1 if entry["attacked"] else 0)
        ends.append(at)
    assert len(model.calls) == at + 1 == res.counters["forward"]
    broken_by = res.metrics["broken_by"]
    assert (broken_by == 0).any() and [e["robust_after"] for e in cascade][-1] < B  # exercised
    for i in range(B):
        stage = int(broken_by[i])
        if stage < 0:
            continue
        for inp, _, _ in model.calls[ends[stage] :]:  # every call after the stage that broke it
            assert torch.equal(inp[i], res.x_adv[i]), i
    # the final verdict is the model's on the batch as returned
    final = confirm(model, attack.threat, x, res.x_adv, y).confirmed
    assert torch.equal(final, res.success)


def test_flag_off_keeps_results_and_draws():
    """Precisions(batch_dependent=False) is the default: the same result, bit for bit."""
    model, x, y = _batch()
    model.eval()
    for name in ("apgd-t", "pgd", "square", "fab-t"):
        attack = robustkit.create_attack(name, **{"eps": EPS, **IMAGE_ATTACKS[name]})
        plain = attack(model, x, y, generator=sample_generators(0, range(B)))
        flagged = attack(model, x, y, precisions=Precisions.single(model, batch_dependent=False),
                         generator=sample_generators(0, range(B)))  # fmt: skip
        assert torch.equal(plain.x_adv, flagged.x_adv) and torch.equal(plain.success, flagged.success), name


def test_precisions_carry_the_flag_and_held_rows_get_no_gradient():
    model = nn.Linear(4, 3)
    fast = make_fastpath(amp="bf16").precisions(model, batch_dependent=True)
    assert fast.batch_dependent and Judge(Misclassification(), fast).whole_batch
    assert make_fastpath().precisions(model, batch_dependent=True).batch_dependent
    assert not make_fastpath().precisions(model).batch_dependent
    assert not Judge.of(model).whole_batch
    with pytest.raises(ConfigError, match="batch_dependent"):
        Precisions.single(model, batch_dependent="yes")  # type: ignore[arg-type]
    judge = Judge(Misclassification(), fast)
    rows = torch.tensor([True, False, True])
    values = torch.full((3, 4), 0.5)
    held, held_judge = judge.holding(fast.fast, rows, values)
    assert isinstance(held, Held) and held is held_judge.precisions.fast
    assert held_judge.precisions.reference is not held and held_judge.whole_batch
    x = torch.rand(3, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(held_judge.precisions.reference(x).sum(), x)
    assert (grad[rows] == 0).all() and (grad[~rows] != 0).all()
    assert torch.allclose(held_judge.precisions.reference(x)[rows], model(values[rows]))
    with pytest.raises(ConfigError, match="whole batch"):
        held(torch.rand(2, 4))


def test_whole_batch_autoattack_beats_the_subset_path_on_test_time_batchnorm(
    shapes_model, shapes_test, one_thread
):
    """On a test-time-BN model (BatchNorm in train mode) the cascade on shrinking subsets attacks other
    models than the deployed one: its claims come from batches of a few samples, and its examples, put
    back together as the batch the model is deployed on, leave many samples robust. Attacking the
    deployed batch reaches a lower robust accuracy, and what it reports is that batch's verdict."""
    model = copy.deepcopy(shapes_model).train()
    n = 48
    x = torch.stack([shapes_test[i][0] for i in range(n)])
    y = torch.tensor([int(shapes_test[i][1]) for i in range(n)])
    attack = robustkit.create_attack("autoattack", eps=4 / 255, steps=10, n_targets=3, queries=40)
    robust = {}
    for whole in (False, True):
        res = attack(model, x, y, precisions=Precisions.single(model, batch_dependent=whole),
                     generator=sample_generators(0, range(n)))  # fmt: skip
        deployed = ~confirm(model, attack.threat, x, res.x_adv, y).confirmed
        robust[whole] = (int((~res.success).sum()), int(deployed.sum()))
    assert robust[True][0] == robust[True][1]  # whole batch: it reports the deployed batch's verdict
    assert robust[False][0] != robust[False][1]  # subsets: it reports other batches' verdicts
    assert robust[True][0] < robust[False][1] / 2  # measured: 2 against 14 of 48
    assert model.training
