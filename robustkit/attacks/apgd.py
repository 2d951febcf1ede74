"""Auto-PGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and checkpoints, L-inf and L2.

Registry keys:

- ``apgd-ce``: untargeted, cross-entropy loss.
- ``apgd-dlr``: untargeted, difference-of-logits-ratio loss (invariant to logit shift and scale).
- ``apgd-t``: targeted DLR over the top ``n_targets`` classes of the clean prediction (classes ranked
  2nd, 3rd, ... by the clean logits; ``min(n_targets, K - 1)`` of them), each run only on the samples
  still robust. A sample counts as broken when it is misclassified (AutoAttack's criterion). When a
  ``target`` tensor is passed at call time, one targeted run against it is made instead and success
  means "classified as the target".
- ``apgd``: the generic form (any ``loss`` from ``robustkit.functional.losses``, ``targeted`` flag).

The algorithm follows the original: start at a random point on the sphere of radius eps, initial step
2 * eps, momentum 0.75, checkpoints at fractions p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of
the budget (first after 22 %), where the step is halved for a sample when fewer than ``rho`` of the
steps since the last checkpoint increased its loss, or when it was not halved at the previous
checkpoint and its best loss has not improved since. On halving, the iterate restarts from the best
point. Differences from the reference code, none of which weakens the attack: the first step's
"increase" is measured against the loss at the random start, and samples that are already broken
are dropped from the batch at checkpoints (compaction) instead of being optimized further. For a
batch-dependent model (``Judge.whole_batch``) every run keeps the whole batch: broken samples stay in
it, held at their adversarial point, and the reported success is the verdict on the final batch.

Returned ``x_adv``: for broken samples the adversarial iterate found; for robust samples the iterate
with the highest loss over all restarts (always inside the threat model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..functional.losses import get_loss
from ..functional.projection import batch_view, flat_norm
from ..functional.random import GeneratorLike, normal, uniform
from ..threat import L2, Linf, ThreatModel
from .base import (
    Counter,
    Judge,
    pick_runs,
    positive_ints,
    register,
    repeat_runs,
)
from .expectation import expected_loss_and_grad
from .loop import where_batch
from .lp import SweepAttack, SweepCall, robust_runs, stacked_targets

Objective = Callable[[torch.Tensor], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """The iterations (0-based, inclusive) after which APGD checks whether to halve the step."""
    k, k_min, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], k - 1
    while at < steps:
        out.append(at)
        k = max(k - decr, k_min)
        at += k
    return out


def random_start(x: torch.Tensor, threat: ThreatModel, generator: GeneratorLike) -> torch.Tensor:
    """A random point on the sphere of radius eps (L-inf: a scaled uniform draw, L2: a Gaussian
    direction), clipped to [0, 1], as in the reference APGD."""
    if isinstance(threat, Linf):
        t = 2 * uniform(x.shape, generator, x.device, x.dtype) - 1
        delta = threat.eps * t / batch_view(flat_norm(t, float("inf")) + 1e-12, t)
    elif isinstance(threat, L2):
        t = normal(x.shape, generator, x.device, x.dtype)
        delta = threat.eps * t / batch_view(flat_norm(t, 2) + 1e-12, t)
    else:
        delta = threat.init(x, generator)
    return (x + threat.project(delta)).clamp(0.0, 1.0)


def _step(x: torch.Tensor, point: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``point`` onto the threat model around ``x`` (ball, then the [0, 1] box)."""
    return x + threat.clip(x, point - x)


@dataclass
class _Batch:
    """APGD's working batch, one row per sample still in it (``compact`` drops the broken ones):
    the inputs and targets, the iterate and its momentum, the best point so far, the first
    adversarial point found, and the step-size controller's state."""

    x: torch.Tensor
    y: torch.Tensor
    loss_target: torch.Tensor | None
    success_target: torch.Tensor | None
    x_adv: torch.Tensor  # the iterate
    x_old: torch.Tensor  # the previous iterate (momentum)
    grad: torch.Tensor  # the gradient at the iterate
    x_best: torch.Tensor  # the point of highest loss
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    loss_prev: torch.Tensor  # the loss at the previous iterate
    loss_best_last: torch.Tensor  # the best loss at the last checkpoint
    x_succ: torch.Tensor  # the first adversarial iterate (where ``ok``)
    ok: torch.Tensor
    step: torch.Tensor  # per-sample step size
    ups: torch.Tensor  # steps since the last checkpoint that increased the loss
    reduced_last: torch.Tensor  # whether the step was halved at the last checkpoint

    def rows(self, keep: torch.Tensor) -> _Batch:
        """The batch of the rows ``keep`` (a boolean mask)."""
        return _Batch(**{f.name: _rows(getattr(self, f.name), keep) for f in dataclasses.fields(self)})


def _rows(v: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    return None if v is None else v[keep]


def apgd_run(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    objective: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    *,
    steps: int,
    rho: float,
    counter: Counter,
    generator: GeneratorLike,
    loss_target: torch.Tensor | None = None,
    success_target: torch.Tensor | None = None,
    eot_samples: int = 1,
    compact: bool = True,
    start: torch.Tensor | None = None,
    judge: Judge | None = None,
    trace: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start (``start`` when given, else drawn from ``generator``).
    Returns (x_adv, success, best loss), all of batch size B.

    ``objective(logits, y, loss_target)`` is maximized; success is misclassification, or
    ``pred == success_target`` when given, decided by ``judge`` (default: the exact criterion on
    ``model``; behind a bf16 fast path only clear successes count). Samples that succeed are removed from the working batch at
    checkpoints (the only host synchronizations of the loop) when ``compact``. Under
    ``judge.whole_batch`` they stay in it, held at their first adversarial iterate. ``trace``, when given,
    receives the per-sample ``loss_gain`` (best loss less the loss at the start) and ``grad_norm`` (the
    input gradient's L2 norm at the start).
    """
    n = x.shape[0]
    out_adv = x.clone()
    out_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    out_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    idx = torch.arange(n, device=x.device)

    def grad_at(
        point: torch.Tensor, ys: torch.Tensor, lts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obj: Objective = lambda logits: objective(logits, ys, lts)  # noqa: E731
        return expected_loss_and_grad(model, point, obj, counter, eot_samples)

    judge = judge or Judge.of(model)
    whole = judge.whole_batch
    # EOT over a stochastic model: success is a probability over draws, so every row is pushed on to its
    # highest expected loss (no compaction, no early stop) and that point is returned, not the first
    # iterate whose averaged logits crossed the boundary (misclassified by about half of the draws)
    deep = eot_samples > 1 and not whole
    compact = compact and not whole and not deep
    x_adv = random_start(x, threat, generator) if start is None else start
    loss, logits, grad = grad_at(x_adv, y, loss_target)
    loss_start, grad_norm = loss.clone(), grad.flatten(1).norm(dim=1)
    s = _Batch(
        x=x, y=y, loss_target=loss_target, success_target=success_target, x_adv=x_adv, x_old=x_adv, grad=grad,
        x_best=x_adv, grad_best=grad, loss_best=loss, loss_prev=loss, loss_best_last=loss, x_succ=x_adv,
        ok=judge.decide(x_adv, logits, y, success_target, counter),
        step=torch.full((n,), 2.0 * threat.eps, dtype=x.dtype, device=x.device),
        ups=torch.zeros(n, dtype=torch.int32, device=x.device),
        reduced_last=torch.ones(n, dtype=torch.bool, device=x.device),
    )  # fmt: skip
    marks = set(checkpoints(steps))
    since = 0
    for i in range(steps):
        xs, x_adv = s.x, s.x_adv
        momentum = x_adv - s.x_old
        s.x_old = x_adv
        a = 0.75 if i > 0 else 1.0
        z = _step(xs, x_adv + batch_view(s.step, xs) * threat.direction(s.grad), threat)
        x_adv = _step(xs, x_adv + (z - x_adv) * a + momentum * (1 - a), threat)
        if whole:  # a broken row stays in the batch where it broke
            x_adv = where_batch(s.ok, s.x_succ, x_adv)
        loss, logits, grad = grad_at(x_adv, s.y, s.loss_target)
        hit = judge.decide(x_adv, logits, s.y, s.success_target, counter) & ~s.ok
        s.x_succ = where_batch(hit, x_adv, s.x_succ)
        s.ok = s.ok | hit
        better = loss > s.loss_best
        s.x_best = where_batch(better, x_adv, s.x_best)
        s.grad_best = where_batch(better, grad, s.grad_best)
        s.loss_best = torch.where(better, loss, s.loss_best)
        s.ups = s.ups + (loss > s.loss_prev).int()
        s.loss_prev = loss
        s.x_adv, s.grad = x_adv, grad
        since += 1
        if i not in marks:
            continue
        oscillating = s.ups.float() <= since * rho
        stalled = ~s.reduced_last & (s.loss_best_last >= s.loss_best)
        halve = oscillating | stalled
        s.reduced_last, s.loss_best_last = halve, s.loss_best
        s.step = torch.where(halve, s.step / 2, s.step)
        s.x_adv = where_batch(halve, s.x_best, s.x_adv)
        s.grad = where_batch(halve, s.grad_best, s.grad)
        s.ups = torch.zeros_like(s.ups)
        since = 0
        if (compact or whole) and i < steps - 1:
            done = s.ok
            n_done = int(done.sum())  # one host sync per checkpoint
            if n_done == done.numel():
                break
            if (
                compact and n_done * 4 >= done.numel()
            ):  # drop broken samples once a quarter of the batch is done
                _write(out_adv, out_ok, out_loss, idx, s, done)
                keep = ~done
                idx = idx[keep]
                s = s.rows(keep)
    if deep:
        s.x_succ = s.x_best
    _write(out_adv, out_ok, out_loss, idx, s, torch.ones_like(s.ok))
    if trace is not None:
        trace.update(loss_gain=out_loss - loss_start, grad_norm=grad_norm)
    return out_adv, out_ok, out_loss


def _write(out_adv, out_ok, out_loss, idx, s: _Batch, which) -> None:
    """Copy the finished samples (``which``) of the working batch into the output buffers."""
    sel = idx[which]
    ok = s.ok[which]
    out_adv[sel] = where_batch(ok, s.x_succ[which], s.x_best[which])
    out_ok[sel] = ok
    out_loss[sel] = s.loss_best[which]


def _objective(name: str, num_classes: int, targeted: bool):
    """The per-sample loss to maximize, with a fallback where DLR is undefined (too few classes)."""
    need = 4 if targeted else 3
    if name == "dlr" and num_classes < need:
        raise ConfigError(
            f"the {'targeted ' if targeted else ''}DLR loss needs at least {need} classes, the model has "
            f"{num_classes}; use loss='ce'"
        )
    return get_loss(name)


@dataclass(frozen=True, kw_only=True)
class APGD(SweepAttack):
    """Auto-PGD. ``steps`` iterations per run, ``restarts`` runs (each only on samples still robust).

    ``eot_samples > 1`` averages gradients over that many passes of a stochastic model (EOT).
    ``targeted`` sweeps the top ``n_targets`` classes (see the module docstring).
    """

    name: ClassVar[str] = "apgd"
    input_kind: ClassVar[str] = "image"

    steps: int = 100
    """Iterations per run."""
    restarts: int = 1
    """Runs, each only on the samples still robust."""
    loss: str = "ce"
    """``ce`` or ``dlr`` (the targeted DLR when ``targeted``)."""
    rho: float = 0.75
    """Fraction of improving steps below which a checkpoint halves the step size."""
    eot_samples: int = 1
    """Gradient passes averaged per step over a stochastic model's randomness (EOT)."""
    targeted: bool = False
    """Sweep the top ``n_targets`` classes of the clean prediction (APGD-T)."""
    n_targets: int = 9
    """Target classes swept when ``targeted`` (9, or K-1 when K <= 10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        positive_ints(self, "steps", "restarts", "eot_samples", "n_targets")
        if not isinstance(self.rho, int | float) or not 0 < self.rho <= 1:
            raise ConfigError(f"{self.name}: rho must be in (0, 1], got {self.rho!r}")

    def plan(self, call: SweepCall) -> tuple[list, SweepCall]:
        """The plans, and the loss (``setup``), checked against the number of classes."""
        clean = call.clean_logits()
        loss_fn = _objective(self.loss, clean.shape[1], self.targeted or call.target is not None)
        return self.plans(call, lambda: clean), call._replace(setup=loss_fn)

    def verdict(self, call: SweepCall, x_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        if call.judge.tentative or call.judge.whole_batch:  # in fp32 (bf16 fast path); in the final batch
            return call.judge.verdict(x_adv, call.y, call.target, call.counter)
        return success

    def serial(self, call: SweepCall, plans: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (target, restart) run on the samples no earlier run broke (``robust_runs``); a sample
        keeps its first success, else the result of highest loss."""
        x, y, target = call.x, call.y, call.target
        n = x.shape[0]
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_adv = x.clone()
        best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        for run in robust_runs(success, plans, self.restarts, call.generator, call.model, call.judge, x_adv):
            sel, keep, loss_target = run.sel, run.keep, run.plan
            adv, ok, loss = apgd_run(
                run.model, x[sel], y[sel], self.threat, call.setup,
                steps=self.steps, rho=self.rho, counter=call.counter, generator=run.generator,
                loss_target=None if loss_target is None else loss_target[sel],
                success_target=None if target is None else target[sel],
                eot_samples=self.eot_samples, judge=run.judge, trace=None if call.metrics else call.metrics,
            )  # fmt: skip
            take = keep & (ok | (loss > best_loss[sel]))
            x_adv[sel[take]] = adv[take]
            best_loss[sel] = torch.where(keep, torch.maximum(best_loss[sel], loss), best_loss[sel])
            success[sel] = torch.where(keep, ok, success[sel])
        return x_adv, success

    def stacked(self, call: SweepCall, runs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (target, restart) run in one batch of ``len(runs) * B`` (GPU: fills the device).

        Run r of sample i starts from the r-th draw of sample i's generator, as in the one-by-one
        loop, and a sample's result is its first successful run, else the run of highest loss (the
        first of equals): the one-by-one loop's result, which runs each run only on the samples no
        earlier run broke (with one generator per sample, as the runner gives; a shared generator
        draws differently, equally at random).
        """
        x, target = call.x, call.target
        r, n = len(runs), x.shape[0]
        starts = torch.cat([random_start(x, self.threat, call.generator) for _ in runs])
        trace: dict[str, torch.Tensor] = {}
        adv, ok, loss = apgd_run(
            call.model, repeat_runs(x, r), repeat_runs(call.y, r), self.threat, call.setup,
            steps=self.steps, rho=self.rho, counter=call.counter, generator=None,
            loss_target=stacked_targets(runs), success_target=None if target is None else repeat_runs(target, r),
            eot_samples=self.eot_samples, start=starts, judge=call.judge, trace=trace,
        )  # fmt: skip
        call.metrics.update({key: v.view(r, n)[0] for key, v in trace.items()})  # the first run's, as serial
        ok, loss = ok.view(r, n), loss.view(r, n)
        return pick_runs(adv, torch.where(ok.any(0), ok.float().argmax(0), loss.argmax(0))), ok.any(0)


@dataclass(frozen=True, kw_only=True)
class APGDCE(APGD):
    """APGD on the cross-entropy loss (AutoAttack's first stage)."""

    name: ClassVar[str] = "apgd-ce"
    loss: str = "ce"


@dataclass(frozen=True, kw_only=True)
class APGDDLR(APGD):
    """APGD on the DLR loss (robust to logit rescaling, catches masking by large logits)."""

    name: ClassVar[str] = "apgd-dlr"
    loss: str = "dlr"


@dataclass(frozen=True, kw_only=True)
class APGDT(APGD):
    """APGD-T: targeted DLR over the top ``n_targets`` classes (AutoAttack's second stage)."""

    name: ClassVar[str] = "apgd-t"
    loss: str = "dlr"
    targeted: bool = True


register("apgd")(APGD)
register("apgd-ce")(APGDCE)
register("apgd-dlr")(APGDDLR)
register("apgd-t")(APGDT)
