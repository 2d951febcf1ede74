"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015), L-inf and L2.

PGD keeps, per sample, the first iterate that succeeds; restarts run only on samples that are still
robust (on a batch-dependent model, on the whole batch with the broken samples held where they broke).
Nothing in the step loop synchronizes with the host. ``eot_samples`` > 1 (both) takes every
gradient as the mean over that many passes of a stochastic model (EOT). PGD's per-sample metrics
(``AttackResult.metrics``, from its first run): ``loss_gain``, the best loss over the steps less the
loss at the start, and ``grad_norm``, the input gradient's L2 norm at the start (a flat loss with
non-zero gradients: the ``flat-loss`` finding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..functional.random import GeneratorLike
from ..threat import ThreatModel
from .base import (
    AttackResult,
    Counter,
    pick_runs,
    positive_ints,
    register,
    repeat_runs,
    stack_in_batch,
    stacked_or_none,
)
from .expectation import expected_loss_and_grad
from .loop import gradient_ascent
from .lp import IterativeLpAttack, LossAttack, LpAttack, final_result, unattacked

__all__ = ["FGSM", "PGD", "gradient_ascent"]


@dataclass(frozen=True, kw_only=True)
class PGD(IterativeLpAttack):
    """PGD with random start and restarts.

    ``step_size`` defaults to 2.5 * eps / steps. ``targeted`` uses ``target`` passed at call time,
    else picks targets by ``target_mode`` ('random', 'least-likely' or a class index).
    """

    eot_samples: int = 1
    """Gradient passes averaged per step over a stochastic model's randomness (EOT)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_ints(self, "eot_samples")

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None, judge=None) -> AttackResult:
        counter = Counter()
        threat = self.threat
        target = self.targets(model, x, y, target, generator, counter)
        if self.eps == 0:
            return unattacked(x, counter)
        step = self.step
        if self.restarts > 1 and stack_in_batch(x) and not (judge is not None and judge.whole_batch):
            stacked = stacked_or_none(
                lambda: self._stacked(model, x, y, target, generator, counter, threat, step, judge), generator
            )
            if stacked is not None:
                return stacked
        trace: dict[str, torch.Tensor] = {}

        def attempt(xs, ys, ts, gens, model=model, judge=judge) -> tuple[torch.Tensor, torch.Tensor]:
            start = self._start(xs, threat, gens)
            first = None if trace else trace  # the metrics of the first run (the whole batch)
            return self._ascend(model, xs, ys, ts, start, threat, step, counter, judge, trace=first)

        x_adv, success = self.restarted(attempt, x, y, target, generator, model=model, judge=judge)
        return AttackResult(x_adv=x_adv, success=success, counters=counter.as_dict(), metrics=trace)

    def _start(self, x: torch.Tensor, threat: ThreatModel, generator: GeneratorLike) -> torch.Tensor:
        """A fresh starting point: ``x`` plus a random draw from the ball, or a copy of ``x``."""
        return threat.random_start(x, generator) if self.random_start else x.clone()

    def _ascend(
        self, model, xs, ys, ts, start, threat, step, counter, judge=None, trace: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def objective_at(live: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return self.objective(ys[live], ts[live] if ts is not None else None)

        return gradient_ascent(
            model,
            xs,
            ys,
            threat,
            steps=self.steps,
            step_size=step,
            objective=self.objective(ys, ts),
            target=ts,
            start=start,
            counter=counter,
            objective_at=objective_at,
            judge=judge,
            eot_samples=self.eot_samples,
            trace=trace,
        )

    def _stacked(self, model, x, y, target, generator, counter, threat, step, judge) -> AttackResult:
        """All restarts in one batch of ``restarts * B`` (GPU: fills the device with small batches).

        Restart r of sample i starts from the r-th draw of sample i's generator, as in the one-by-one
        loop, and a sample's result is its first successful restart, else its last restart: the same
        result as running the restarts one after the other on the samples still robust.
        """
        r, n = self.restarts, x.shape[0]
        starts = [self._start(x, threat, generator) for _ in range(r)]
        ts = repeat_runs(target, r) if target is not None else None
        trace: dict[str, torch.Tensor] = {}
        xs, ys = repeat_runs(x, r), repeat_runs(y, r)
        adv, ok = self._ascend(
            model, xs, ys, ts, torch.cat(starts), threat, step, counter, judge, trace=trace
        )
        ok = ok.view(r, n)
        first = torch.where(ok.any(0), ok.float().argmax(0), r - 1)  # first successful restart, else last
        metrics = {key: v.view(r, n)[0] for key, v in trace.items()}  # of the first run, as one by one
        return AttackResult(
            x_adv=pick_runs(adv, first), success=ok.any(0), counters=counter.as_dict(), metrics=metrics
        )


@dataclass(frozen=True, kw_only=True)
class FGSM(LpAttack, LossAttack):
    """One signed-gradient (L-inf) or normalized-gradient (L2) step of size eps from the clean input;
    ``eot_samples`` > 1 steps along the mean gradient over that many passes (EOT)."""

    eot_samples: int = 1
    """Gradient passes averaged over a stochastic model's randomness (EOT)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_ints(self, "eot_samples")

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None, judge=None) -> AttackResult:
        counter = Counter()
        threat = self.threat
        target = self.targets(model, x, y, target, generator, counter)
        _, _, grad = expected_loss_and_grad(model, x, self.objective(y, target), counter, self.eot_samples)
        result = final_result(
            model, x + threat.clip(x, self.eps * threat.direction(grad)), y, target, counter
        )
        if judge is not None and judge.precisions.surrogate:  # the deployed model's verdict
            result.success = judge.verdict(result.x_adv, y, target, counter)
            result.counters = counter.as_dict()
        return result


register("pgd")(PGD)
register("fgsm")(FGSM)
