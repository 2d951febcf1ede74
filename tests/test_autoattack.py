"""The AutoAttack ensemble: versions, cascade bookkeeping, re-checking of claimed successes, and
robust accuracy against ART's APGD (CE, DLR) and Square on the built-in model and data."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from robustkit.attacks import create_attack
from robustkit.attacks.autoattack import AutoAttack
from robustkit.attacks.base import Attack, AttackResult
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators
from robustkit.threat import make_threat

from .conftest import TinyNet


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "autoattack_vs_art.py"
    spec = importlib.util.spec_from_file_location("autoattack_vs_art", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_table(aa: AutoAttack) -> list[tuple[str, str, dict]]:
    return [(label, a.name, a.params()) for label, a in aa.stages()]


def test_standard_version_is_the_reference_cascade():
    stages = stage_table(create_attack("autoattack", norm="L2", eps=0.5))
    assert [s[1] for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ce, t, fab, square = (s[2] for s in stages)
    assert ce["steps"] == 100 and ce["restarts"] == 1
    assert t["n_targets"] == 9 and t["loss"] == "dlr" and t["targeted"]
    assert fab["n_targets"] == 9 and fab["targeted"]
    assert square["queries"] == 5000
    assert all(s[2]["norm"] == "L2" and s[2]["eps"] == 0.5 for s in stages)


def test_plus_rand_and_overrides():
    plus = stage_table(create_attack("autoattack", version="plus"))
    assert [s[1] for s in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [s[2]["restarts"] for s in plus[:4]] == [5, 5, 5, 5]
    rand = stage_table(create_attack("autoattack", version="rand"))
    assert [(s[1], s[2]["eot_samples"]) for s in rand] == [("apgd-ce", 20), ("apgd-dlr", 20)]
    more = stage_table(create_attack("autoattack", version="rand", eot_samples=50))
    assert {s[2]["eot_samples"] for s in more} == {50}
    # a custom stage's own setting wins over the shared field; display names are kept
    custom = stage_table(create_attack("autoattack", version=[{"attack": "apgd-ce", "name": "ce-10", "steps": 10},
                                                              "square"], steps=3, queries=7))  # fmt: skip
    assert custom[0][0] == "ce-10" and custom[0][2]["steps"] == 10 and custom[1][2]["queries"] == 7


def test_recipes_build_the_documented_attacks():
    from robustkit.evaluation.suite import load_suite

    std, plus, rand = (load_suite(f"autoattack-{v}").entries for v in ("standard", "plus", "rand"))
    assert [e.attack.version for e in (*std, *plus, *rand)] == ["standard", "plus", "rand"]
    assert all(e.attack.eps == 8 / 255 and e.attack.norm == "Linf" for e in (*std, *plus, *rand))
    assert rand[0].attack.eot_samples == 20
    linf, l2 = load_suite("pgd-linf").entries, load_suite("pgd-l2").entries
    assert [round(e.eps * 255) for e in linf] == [1, 2, 4, 8, 16] and [e.eps for e in l2] == [
        0.125,
        0.25,
        0.5,
        1.0,
    ]
    assert {e.attack.steps for e in (*linf, *l2)} == {50} and {e.norm for e in l2} == {"L2"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"version": "standrd"}, "standard"),
        ({"version": "custom"}, "needs attacks"),
        ({"version": ["patch"]}, "not an Lp attack"),
        ({"version": [{"steps": 3}]}, "registry key"),
        ({"version": ["apgd-ce"], "attacks": ["square"]}, "either"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_configurations_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_attack("autoattack", **kwargs)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two samples misclassified from the start
    return model, x, y


def test_cascade_bookkeeping(tiny):
    model, x, y = tiny
    aa = create_attack("autoattack", eps=14 / 255, steps=2, n_targets=2, queries=20)
    res = aa(model, x, y, generator=sample_generators(0, range(12)))
    cascade, broken_by = res.artifacts["cascade"], res.metrics["broken_by"]
    assert [c["attack"] for c in cascade] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [c["black_box"] for c in cascade] == [False, False, False, True]
    assert cascade[0]["attacked"] == 10 and broken_by[:2].tolist() == [-2, -2]
    for before, after in zip(cascade, cascade[1:], strict=False):
        assert after["attacked"] == before["robust_after"]  # each stage only sees the survivors
    for k, c in enumerate(cascade):
        assert c["attacked"] - c["robust_after"] == int((broken_by == k).sum())
        assert c["seconds"] >= 0 and c["total"] == 12
    assert 0 < cascade[-1]["robust_after"] < 10  # a meaningful cascade: some broken, some robust
    assert sum(c["attacked"] > c["robust_after"] for c in cascade) >= 2  # later stages add to the first
    assert torch.equal(res.success, broken_by != -1)
    robust = broken_by == -1
    assert torch.equal(res.x_adv[robust], x[robust])  # robust samples come back clean
    with torch.no_grad():
        assert (model(res.x_adv[broken_by >= 0]).argmax(1) != y[broken_by >= 0]).all()
    assert (res.x_adv - x).abs().max() <= 14 / 255 + 1e-6


@dataclass(frozen=True, kw_only=True)
class Liar(Attack):
    """Claims every sample; ``mode`` 'clean' returns the input, 'outside' leaves the eps ball."""

    name: ClassVar[str] = "liar"
    norm: str = "Linf"
    eps: float = 2 / 255
    mode: str = "clean"

    @property
    def threat(self):
        return make_threat(self.norm, self.eps)

    def run(self, model, x, y, *, target=None, generator=None) -> AttackResult:
        x_adv = x if self.mode == "clean" else (x + 0.5).clamp(0, 1)
        return AttackResult(x_adv=x_adv.clone(), success=torch.ones(x.shape[0], dtype=torch.bool))


@pytest.mark.parametrize("mode", ["clean", "outside"])
def test_false_claims_are_rejected_by_the_recheck(tiny, monkeypatch, mode):
    model, x, y = tiny
    real = create_attack("apgd-ce", eps=2 / 255, steps=4)
    monkeypatch.setattr(AutoAttack, "stages", lambda self: [("liar", Liar(mode=mode)), ("apgd-ce", real)])
    res = create_attack("autoattack", eps=2 / 255)(model, x, y, generator=sample_generators(0, range(12)))
    liar, ce = res.artifacts["cascade"]
    if mode == "clean":
        assert liar["rejected"] == 10  # the fp32 recheck sees the clean prediction
    else:
        assert liar["rejected"] >= 1  # out of the eps ball: refused even where it fools the model
    assert liar["robust_after"] == 10 and ce["attacked"] == 10
    assert (res.x_adv - x).abs().max() <= 2 / 255 + 1e-6


@dataclass(frozen=True, kw_only=True)
class Spy(Attack):
    """Records the model, criterion and precisions each stage is handed; claims nothing."""

    name: ClassVar[str] = "spy"
    norm: str = "Linf"
    eps: float = 2 / 255
    seen: list = dataclasses.field(default_factory=list, compare=False)

    def run(self, model, x, y, *, target=None, generator=None, judge=None) -> AttackResult:
        self.seen.append((model, judge))
        return AttackResult(x_adv=x.clone(), success=torch.zeros(x.shape[0], dtype=torch.bool))


@dataclass(frozen=True, kw_only=True)
class Fp32Spy(Spy):
    precision: ClassVar[str] = "fp32"


def test_stages_get_the_criterion_and_the_model_at_their_precision(tiny, monkeypatch):
    from robustkit.attacks.criteria import Misclassification
    from robustkit.models.fastpath import make_fastpath

    model, x, y = tiny
    models = make_fastpath(amp="bf16").precisions(model)
    spy, fp32_spy = Spy(), Fp32Spy()
    monkeypatch.setattr(AutoAttack, "stages", lambda self: [("spy", spy), ("fp32", fp32_spy)])
    criterion = Misclassification(margin=models.tolerance)
    res = create_attack("autoattack", eps=2 / 255)(models.fast, x, y, criterion=criterion, precisions=models)
    [(seen, judge)], [(seen_fp32, judge_fp32)] = spy.seen, fp32_spy.seen
    assert seen is models.fast and seen_fp32 is models.fp32
    assert judge.criterion == criterion and judge.precisions is models and judge_fp32.precisions is models
    assert judge.tentative and judge.precisions.reference is model
    assert res.artifacts["cascade"][0]["attacked"] == 10  # the clean check: the fp32 model


def test_targeted_call_is_refused(tiny):
    model, x, y = tiny
    with pytest.raises(ConfigError, match="untargeted"):
        create_attack("autoattack", steps=2)(model, x, y, target=y)


def test_not_weaker_than_art_small(shapes_test):
    """Default-run version of the 500-sample comparison below: 32 samples, short budgets, 10 points
    of slack (a handful of samples of random-start and random-search noise)."""
    result = _benchmark().compare(n=32, eps=2 / 255, steps=5, queries=20, batch=32)
    assert result["clean_accuracy"] > 0.9
    for row in result["rows"]:
        assert row["robustkit"] <= row["art"] + 0.10, row


@pytest.mark.slow
def test_not_weaker_than_art_500_samples():
    """Issue 3's acceptance criterion: robustkit's robust accuracy <= ART's + 1 point for APGD-CE,
    APGD-DLR and Square on 500 samples of the shapes test split (about 20 CPU-minutes, mostly ART)."""
    result = _benchmark().compare(n=500, eps=2 / 255, steps=10, queries=100, batch=500)
    for row in result["rows"]:
        assert 0.05 < row["art"] < 0.99, row  # the comparison is not trivially 0 % or 100 %
        assert row["difference_pt"] <= 1.0, row
