"""Sanity checks: each fires on a purpose-built misbehaving model and stays quiet on a normal one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.evaluation.sanity import CHECKS, Finding, checks_markdown, run_sanity_checks
from robustkit.functional.random import sample_generators

N = 16  # samples the checks look at


class Noisy(nn.Module):
    """Randomized defense: Gaussian noise on the input at every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class Softmaxed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class Masked(nn.Module):
    """Gradient masking: exact forward, zero input gradient."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_ZeroGrad.apply(x))


class DynamicDefense(nn.Module):
    """Dynamic defense: two signed-gradient steps on the input inside forward (differentiable in x)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = x.detach().clone().requires_grad_(True)
            for _ in range(2):
                (g,) = torch.autograd.grad(self.net(z).logsumexp(1).sum(), z)
                z = (z + 0.003 * g.sign()).clamp(0, 1).detach().requires_grad_(True)
        return self.net(x + (z - x).detach())


def _summary(monotone: bool = True, square_wins: bool = False) -> dict:
    at2 = 0.5 if monotone else 0.9
    return {
        "n_samples": 100,
        "attacks": [
            {"attack": "pgd", "name": "pgd@1", "norm": "Linf", "eps": 1 / 255, "params": {"steps": 10}, "robust_accuracy": 0.8,
             "loss_trace": {"robust": 80, "flat": 1}},
            {"attack": "pgd", "name": "pgd@2", "norm": "Linf", "eps": 2 / 255, "params": {"steps": 10}, "robust_accuracy": at2},
            {"attack": "square", "name": "square@2", "norm": "Linf", "eps": 2 / 255, "params": {},
             "robust_accuracy": 0.3 if square_wins else 0.95},
        ],
        "views": [{"view": "white-box", "robust_accuracy": 0.5}, {"view": "transfer:std", "robust_accuracy": 0.6}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def data(shapes_test):
    return shapes_test.x[:N], shapes_test.y[:N]


def _by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


def test_normal_model_is_quiet(shapes_model, data):
    x, y = data
    cascade = [{"attack": "apgd-ce", "black_box": False, "attacked": 16, "robust_after": 4},
               {"attack": "square", "black_box": True, "attacked": 4, "robust_after": 4}]  # fmt: skip
    found = _by_name(
        run_sanity_checks(shapes_model, x, y, context={"summary": _summary(), "cascade": cascade})
    )
    assert set(found) == {c.name for c in CHECKS}
    for f in found.values():
        assert f.status == "pass", (f.name, f.evidence)
        assert f.advice == ""


@pytest.mark.parametrize(
    "wrap,check",
    [
        (Noisy, "randomized-outputs"),
        (Softmaxed, "probability-outputs"),
        (Masked, "gradient-health"),
        (Masked, "unbounded-eps"),
        (DynamicDefense, "inference-time-optimization"),
        (lambda net: copy.deepcopy(net).train(), "batch-dependence"),
    ],
)
def test_check_fires_on_misbehaving_model(shapes_model, data, wrap, check):
    x, y = data
    model = wrap(shapes_model)
    # the misbehaviour is specific: the model-level checks of other kinds stay quiet
    quiet = {"probability-outputs", "inference-time-optimization"} - {check}
    wanted = {check, "randomized-outputs"} | quiet  # randomized-outputs feeds batch-dependence
    found = _by_name(
        run_sanity_checks(model, x, y, context={}, checks=[c.name for c in CHECKS if c.name in wanted])
    )
    assert found[check].status == "fail", found[check].evidence
    assert found[check].advice, "a firing check says what to do"
    for name in quiet:
        assert found[name].status == "pass", (name, found[name].evidence)


def test_randomized_model_with_eot_passes(shapes_model, data):
    """The evaluation applied EOT (and judged over fresh draws): the randomness was handled, so the check
    passes and says how (it used to warn even then)."""
    x, y = data
    f = _by_name(
        run_sanity_checks(
            Noisy(shapes_model), x, y, context={"eot_samples": 20}, checks=["randomized-outputs"]
        )
    )
    assert f["randomized-outputs"].status == "pass" and "EOT over 20" in f["randomized-outputs"].evidence
    record = {"eot_samples": 20, "draws": 12}
    f = _by_name(run_sanity_checks(Noisy(shapes_model), x, y, context={"adaptations": record},
                                   checks=["randomized-outputs"]))  # fmt: skip
    assert f["randomized-outputs"].status == "pass" and "12 fresh draws" in f["randomized-outputs"].evidence
    f = _by_name(run_sanity_checks(Noisy(shapes_model), x, y, context={}, checks=["randomized-outputs"]))
    assert f["randomized-outputs"].status == "fail"


@pytest.mark.parametrize(("transfer", "status"), [(0.2, "fail"), (0.48, "pass"), (0.7, "pass")])
def test_transfer_beating_white_box_is_masking(shapes_model, data, transfer, status):
    x, y = data
    summary = {"n_samples": 100, "views": [{"view": "whole-batch", "robust_accuracy": 0.5},
               {"view": "one-at-a-time", "robust_accuracy": 0.6},
               {"view": "transfer:substitute", "robust_accuracy": transfer}]}  # fmt: skip
    (f,) = run_sanity_checks(
        shapes_model, x, y, context={"summary": summary}, checks=["transfer-vs-white-box"]
    )
    assert f.status == status, f.evidence
    assert f.values["white_box"] == "whole-batch" and f.values["gap"] == pytest.approx(0.5 - transfer)
    assert not run_sanity_checks(shapes_model, x, y, context={"summary": {"views": summary["views"][:2]}},
                                 checks=["transfer-vs-white-box"])  # fmt: skip


@pytest.mark.parametrize(("transfer", "status"), [(0.475, "fail"), (0.65, "pass")])
def test_transfer_beating_the_same_attack_white_box_is_masking(shapes_model, data, transfer, status):
    """Views tied overall (every view at 0%: a strong attack broke all) still show masking attack by attack:
    transfer beating the same attack's whole-batch view (same batch composition)."""
    x, y = data
    views = [
        {"view": v, "robust_accuracy": 0.0} for v in ("whole-batch", "among-clean", "transfer:substitute")
    ]
    attacks = [{"name": "pgd@2/255 [whole-batch]", "view": "whole-batch", "robust_accuracy": 0.65},
               {"name": "pgd@2/255 [among-clean]", "view": "among-clean", "robust_accuracy": 0.375},
               {"name": "pgd@2/255 [transfer:substitute]", "view": "transfer:substitute", "robust_accuracy": transfer},
               {"name": "autoattack [whole-batch]", "view": "whole-batch", "robust_accuracy": 0.0},
               {"name": "autoattack [transfer:substitute]", "view": "transfer:substitute", "robust_accuracy": 0.0}]  # fmt: skip
    summary = {"n_samples": 40, "views": views, "attacks": attacks}
    (f,) = run_sanity_checks(
        shapes_model, x, y, context={"summary": summary}, checks=["transfer-vs-white-box"]
    )
    assert f.status == status, f.evidence
    assert f.values["attack_gap"] == pytest.approx(0.65 - transfer)
    if status == "fail":
        assert "pgd@2/255" in f.evidence and "partly masked" in f.evidence


def test_model_state_restored(shapes_model, data):
    x, y = data
    model = copy.deepcopy(shapes_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_sanity_checks(model, x, y, context={"run_attacks": False})
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_monotone_and_black_box_from_summary(shapes_model, data):
    x, y = data
    checks = ["monotone-eps", "black-box-vs-white-box"]
    ok = _by_name(run_sanity_checks(shapes_model, x, y, context={"summary": _summary()}, checks=checks))
    assert ok["monotone-eps"].status == "pass" and ok["black-box-vs-white-box"].status == "pass"
    bad = _by_name(
        run_sanity_checks(shapes_model, x, y, context={"summary": _summary(False, True)}, checks=checks)
    )
    assert bad["monotone-eps"].status == "fail" and "rises" in bad["monotone-eps"].evidence
    assert bad["black-box-vs-white-box"].status == "fail"
    direct = {"robust_accuracy": {"apgd-ce": {"L2": {0.25: 0.4, 0.5: 0.41}}}, "n_samples": 1000}
    small = _by_name(run_sanity_checks(shapes_model, x, y, context=direct, checks=["monotone-eps"]))
    assert small["monotone-eps"].status == "fail"  # 10 samples' worth of rise
    none = run_sanity_checks(shapes_model, x, y, context={}, checks=checks)
    assert none == []  # no data: no finding


def test_square_beats_white_box_on_masked_model(shapes_model, data):
    """End to end: the AutoAttack cascade on a gradient-masked model shows Square doing the work."""
    x, y = data
    model = Masked(shapes_model)
    aa = create_attack("autoattack", version=["apgd-ce", "square"], eps=8 / 255, steps=5, queries=60)
    res = aa(model, x, y, generator=sample_generators(0, range(N)))
    cascade = res.artifacts["cascade"]
    assert cascade[1]["attacked"] > cascade[1]["robust_after"], cascade
    f = _by_name(
        run_sanity_checks(model, x, y, context={"cascade": [cascade]}, checks=["black-box-vs-white-box"])
    )
    assert f["black-box-vs-white-box"].status == "fail"
    assert _by_name(run_sanity_checks(model, x, y, context={"square_beat_whitebox": False},
                                      checks=["black-box-vs-white-box"]))["black-box-vs-white-box"].status == "pass"  # fmt: skip


def test_crashing_check_is_reported_not_raised(data):
    x, y = data

    def broken(z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] != x.shape[0]:
            raise RuntimeError("only full batches")
        return torch.zeros(z.shape[0], 10)

    found = _by_name(
        run_sanity_checks(broken, x, y, context={"run_attacks": False}, checks=["batch-dependence"])
    )
    assert found["batch-dependence"].status in ("warn", "fail")


def test_finding_contract():
    with pytest.raises(ValueError):
        Finding("x", "ok", "e")
    f = Finding("x", "warn", "e", "a", {"v": 1})
    assert f.to_dict() == {"name": "x", "status": "warn", "evidence": "e", "advice": "a", "values": {"v": 1}}


def test_docs_page_is_the_check_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "sanity-checks.md").read_text()
    assert checks_markdown() in page
    import robustkit.evaluation.sanity as sanity

    for c in CHECKS:
        assert c.name in sanity.__doc__


def test_runner_hands_the_stored_cascade_to_the_black_box_check(tmp_path, shapes_model):
    """In a real run, the cascade stored per batch reaches the check (not only in direct calls)."""
    from robustkit.api import evaluate
    from robustkit.evaluation.store import Store

    suite = {"name": "masked", "attacks": [
        {"attack": "autoattack", "version": ["apgd-ce", "square"], "eps": "8/255", "steps": 5, "queries": 60}]}  # fmt: skip
    res = evaluate(model=Masked(shapes_model), suite=suite, out=tmp_path, name="m", limit=N, device="cpu",
                   progress=False, report=False)  # fmt: skip
    store = Store(res.run_dir / "results.sqlite")
    try:
        findings = {row[0]: row for row in store.db.execute("SELECT name, status, evidence FROM findings")}
    finally:
        store.close()
    assert findings["black-box-vs-white-box"][1] == "fail", findings["black-box-vs-white-box"]
    assert "Square broke" in findings["black-box-vs-white-box"][2]
