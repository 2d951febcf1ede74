"""``--defense a,b,c``: the plan is said up front (which defenses must be trained first, how many steps,
about how long), the ready ones are evaluated first and each one to train as soon as it is trained (not
all trained, then all evaluated), a cached defense is never trained again, and the results keep the order
asked for."""

from __future__ import annotations

import logging

import pytest
import torch

from robustkit.api import evaluate_defenses
from robustkit.defenses import loading
from robustkit.defenses.base import DEFENSES, DefenseRecipe
from robustkit.evaluation.defended import estimate_training, plan_defenses
from robustkit.training.settings import TrainSettings

TINY = TrainSettings(epochs=1, batch_size=16, train_size=32, width=4)
SUITE = {"name": "one", "attacks": [{"attack": "fgsm", "eps": "2/255"}]}
CPU = torch.device("cpu")


@pytest.fixture
def recipes(monkeypatch, tmp_path):
    """Two tiny recipes, registered for this test only, and an empty cache; every training recorded."""
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    for name in ("test-plan-a", "test-plan-b"):
        recipe = DefenseRecipe(name=name, description="tiny standard training (tests only)", settings=TINY)
        monkeypatch.setitem(DEFENSES._items, name, lambda recipe=recipe: recipe)
    trained: list[str] = []
    real = loading.train_defense

    def train_defense(name, *args, **kwargs):
        trained.append(name)
        kwargs["test_size"] = 16
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loading, "train_defense", train_defense)
    return trained


pytestmark = pytest.mark.usefixtures("one_thread")  # two threads crawl on a loaded CPU


def test_estimate_counts_the_recipes_steps_and_times_its_own_loss(monkeypatch):
    from robustkit.defenses.baselines import MadryAT

    adversarial = MadryAT(name="test-plan-at", description="tiny PGD-AT (tests only)", settings=TINY)
    monkeypatch.setitem(DEFENSES._items, "test-plan-at", lambda: adversarial)
    steps, per_step = estimate_training("test-plan-at", "shapes", CPU)
    assert steps == TINY.epochs * (TINY.train_size // TINY.batch_size) == 2
    monkeypatch.setitem(
        DEFENSES._items, "test-plan-plain", lambda: DefenseRecipe(name="p", description="", settings=TINY)
    )
    plain = estimate_training("test-plan-plain", "shapes", CPU)[1]
    assert per_step > 2 * plain  # ten inner attack steps cost more than one clean step


def test_the_plan_names_what_must_be_trained(recipes):
    loading.cached_model("test-plan-b", "shapes", CPU, False)  # b is in the cache
    assert recipes == ["test-plan-b"]
    a, b, own = plan_defenses(["test-plan-a", "test-plan-b", "test-plan-a:w.safetensors"], dataset="shapes",
                              device=CPU)  # fmt: skip
    assert (a.train, a.steps) == (True, 2) and a.seconds is not None and a.seconds > 0
    assert not b.train and not own.train  # cached; a user's weights file


def test_ready_first_each_evaluated_once_trained_cached_never_retrained(recipes, tmp_path, caplog):
    loading.cached_model("test-plan-b", "shapes", CPU, False)
    weights = loading.cache_path("test-plan-b", "shapes") / loading.FINAL
    stamp = weights.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="robustkit")
    caplog.clear()  # only what evaluate_defenses says (b's training above is logged when the level allows)
    results, _ = evaluate_defenses("test-plan-a,test-plan-b", suite=SUITE, out=tmp_path / "r", name="p",
                                   limit=8, device="cpu", progress=False, report=False)  # fmt: skip
    said = [r.getMessage() for r in caplog.records]
    plan = next(m for m in said if m.startswith("defenses: "))
    assert "1 of 2 must be trained on 'shapes' first (not cached)" in plan
    assert "test-plan-a (2 steps, about" in plan and "after the ready ones (test-plan-b)" in plan
    order = [m for m in said if m.startswith(("defense ", "training defense", "run p-"))]
    b_done = next(i for i, m in enumerate(order) if m.startswith("run p-test-plan-b"))
    a_trains = next(i for i, m in enumerate(order) if m.startswith("training defense 'test-plan-a'"))
    assert order[0] == "defense 1 of 2: test-plan-b" and b_done < a_trains
    assert order[a_trains - 1].startswith("defense 2 of 2: test-plan-a (training first, about")
    assert recipes == ["test-plan-b", "test-plan-a"]  # b only when it was put in the cache
    assert weights.stat().st_mtime_ns == stamp
    assert [r.run_dir.name for r in results] == ["p-test-plan-a", "p-test-plan-b"]  # the order asked for
    again = plan_defenses(["test-plan-b", "test-plan-a"], dataset="shapes", device=CPU)
    assert not any(p.train for p in again)  # both cached now: a rerun trains nothing
