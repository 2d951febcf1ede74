"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020), L-inf and L2.

FAB looks for the adversarial example of smallest norm: at each step it linearizes the decision
boundary at the current point, projects both the current point and the clean input onto that
hyperplane (inside the [0, 1] box), moves to a convex combination of the two projections biased
toward the clean input, and after every success steps back toward the clean input to shrink the
perturbation. Within robustkit's Lp threat model a sample counts as broken when FAB finds an
adversarial example of norm at most ``eps``.

Registry keys: ``fab-t`` (targeted at the classes ranked 2..n_targets+1 by the clean logits, one
boundary per run, a single backward per step: AutoAttack's third stage) and ``fab`` (untargeted:
the closest of all K - 1 boundaries, K backward passes per step: used by the ``plus`` version).

The box-constrained projection onto a hyperplane is solved exactly: with ``c = w.t - b >= 0`` the
cheapest way to reach the hyperplane moves coordinate i against ``sign(w_i)`` by
``min(s, room_i)`` (L-inf) or ``min(s |w_i|, room_i)`` (L2), where ``room_i`` is the distance to the
box face in that direction, and the scalar ``s`` solves the piecewise-linear equation
``sum_i |w_i| |d_i| = c`` found by sorting the breakpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..functional.projection import batch_view, flat_norm
from ..functional.random import GeneratorLike, normal, uniform
from ..threat import ThreatModel
from .base import (
    Counter,
    Judge,
    forward,
    pick_runs,
    positive,
    positive_ints,
    register,
    repeat_runs,
)
from .lp import SweepAttack, SweepCall, robust_runs, stacked_targets


def project_onto_hyperplane(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """Smallest-Lp ``d`` (p = inf or 2) with ``w . (t + d) = b`` and ``t + d`` in [0, 1].

    ``t`` and ``w`` are (B, n), ``b`` is (B,). When the hyperplane cannot be reached inside the box,
    ``d`` moves every coordinate as far as the box allows toward it.
    """
    c = (w * t).sum(1) - b
    flip = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w = w * flip[:, None]
    c = c.abs()
    aw = w.abs()
    room = torch.where(w > 0, t, 1 - t) * (aw > 0)
    if p == float("inf"):
        slope, brk, scale = aw, room, torch.ones_like(aw)
    elif p == 2:
        slope, brk, scale = aw * aw, torch.where(aw > 0, room / aw.clamp_min(1e-30), 0.0), aw
    else:
        raise ConfigError(f"FAB supports the Linf and L2 norms, got p={p}")
    brk_sorted, order = brk.sort(dim=1)
    slope_sorted = slope.gather(1, order)
    reach = torch.cumsum(slope_sorted * brk_sorted, dim=1)  # sum over the saturated coordinates
    used = torch.cumsum(slope_sorted, dim=1)
    total = used[:, -1:]
    g_at_brk = reach + brk_sorted * (total - used)  # g(s) at each breakpoint, nondecreasing
    k = (g_at_brk < c[:, None]).sum(1, keepdim=True)
    prev = (k - 1).clamp_min(0)
    reach_prev = torch.where(k > 0, reach.gather(1, prev), 0.0)
    used_prev = torch.where(k > 0, used.gather(1, prev), 0.0)
    s = (c[:, None] - reach_prev) / (total - used_prev).clamp_min(1e-30)
    s = torch.where(k >= w.shape[1], float("inf"), s)
    magnitude = torch.minimum(s * scale, room)
    return -torch.sign(w) * magnitude * (aw > 0)


def _diffs(
    model: Callable, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, counter: Counter
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit differences f_j - f_y (B, m) and their input gradients (B, m, ...), plus logits.

    Targeted: m = 1 (the target). Untargeted: m = K with the true class's column set to +inf distance
    by the caller.
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        logits = forward(model, leaf, counter)
        true = logits.gather(1, y[:, None])
        if target is not None:
            diff = logits.gather(1, target[:, None]) - true
            (g,) = torch.autograd.grad(diff.sum(), leaf)
            counter.backward += 1
            return diff.detach(), g[:, None], logits.detach()
        diff = logits - true
        grads = []
        for j in range(logits.shape[1]):
            (g,) = torch.autograd.grad(diff[:, j].sum(), leaf, retain_graph=j < logits.shape[1] - 1)
            counter.backward += 1
            grads.append(g)
    return diff.detach(), torch.stack(grads, 1), logits.detach()


def random_offset(x0: torch.Tensor, threat: ThreatModel, generator: GeneratorLike) -> torch.Tensor:
    """FAB's random start: a random direction scaled to half the radius."""
    if threat.p == float("inf"):
        draw = uniform(x0.shape, generator, x0.device, x0.dtype) * 2 - 1
    else:
        draw = normal(x0.shape, generator, x0.device, x0.dtype)
    return draw / batch_view(flat_norm(draw, threat.p) + 1e-12, draw) * 0.5 * threat.eps


def fab_run(
    model: Callable,
    x0: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    target: torch.Tensor | None,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
    random_start: bool,
    generator: GeneratorLike,
    counter: Counter,
    check_every: int = 10,
    offset: torch.Tensor | None = None,
    judge: Judge | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run. Returns (best adversarial found, its norm; inf where none was found). The run
    starts from ``x0``, or from ``x0 + offset`` (clipped to [0, 1]) when ``offset`` is given, or from a
    random point at half the radius (``random_start``, drawn from ``generator``). ``judge`` (default:
    the exact criterion on ``model``; behind a bf16 fast path only clear successes count) decides
    which iterates are adversarial.

    Samples whose best norm is already within ``threat.eps`` leave the batch every ``check_every``
    steps (a host synchronization), since their verdict cannot change; under ``judge.whole_batch`` they
    stay in it, held at that example, and the run ends once every sample is done.
    """
    p = threat.p
    n = x0.shape[0]
    judge = judge or Judge.of(model)
    out_adv, out_norm = x0.clone(), torch.full((n,), float("inf"), dtype=x0.dtype, device=x0.device)
    idx = torch.arange(n, device=x0.device)
    if offset is None and random_start:
        offset = random_offset(x0, threat, generator)
    x1 = x0.clone() if offset is None else (x0 + offset).clamp(0.0, 1.0)
    best_adv, best_norm = x0.clone(), out_norm.clone()
    xs, ys, ts = x0, y, target
    whole = judge.whole_batch
    for i in range(steps):
        if whole:  # a sample done stays in the batch at its example within the budget
            x1 = torch.where(batch_view(best_norm <= threat.eps, x1), best_adv, x1)
        df, dg, _ = _diffs(model, x1, ys, ts, counter)
        dual = dg.flatten(2).norm(p=1.0 if p == float("inf") else 2.0, dim=2)  # dual norm of each gradient
        dist = df.abs() / (dual + 1e-12)
        if ts is None:
            dist = dist.scatter(1, ys[:, None], float("inf"))
        j = dist.argmin(1)
        rows = torch.arange(x1.shape[0], device=x1.device)
        w = dg[rows, j].flatten(1)
        b = -df[rows, j] + (w * x1.flatten(1)).sum(1)
        d = project_onto_hyperplane(
            torch.cat([x1.flatten(1), xs.flatten(1)]), torch.cat([w, w]), torch.cat([b, b]), p
        )
        d1, d2 = d[: x1.shape[0]].view_as(x1), d[x1.shape[0] :].view_as(x1)
        a1 = flat_norm(d1, p).clamp_min(1e-8)
        a2 = flat_norm(d2, p).clamp_min(1e-8)
        alpha = batch_view((a1 / (a1 + a2)).clamp(0.0, alpha_max), x1)
        x1 = ((x1 + eta * d1) * (1 - alpha) + (xs + eta * d2) * alpha).clamp(0.0, 1.0)
        if whole:
            x1 = torch.where(batch_view(best_norm <= threat.eps, x1), best_adv, x1)
        with torch.no_grad():
            is_adv = judge.decide(x1, forward(model, x1, counter), ys, ts, counter)
        norm = flat_norm(x1 - xs, p)
        better = is_adv & (norm < best_norm)
        best_adv = torch.where(batch_view(better, x1), x1, best_adv)
        best_norm = torch.where(better, norm, best_norm)
        x1 = torch.where(batch_view(is_adv, x1), xs + (x1 - xs) * beta, x1)
        if (i + 1) % check_every == 0 and i < steps - 1:
            done = best_norm <= threat.eps
            n_done = int(done.sum())  # one host sync every ``check_every`` steps
            if whole and n_done == done.numel():
                break
            if n_done and not whole:
                out_adv[idx[done]], out_norm[idx[done]] = best_adv[done], best_norm[done]
                keep = ~done
                if n_done == done.numel():
                    return out_adv, out_norm
                idx, xs, ys, x1 = idx[keep], xs[keep], ys[keep], x1[keep]
                best_adv, best_norm = best_adv[keep], best_norm[keep]
                ts = None if ts is None else ts[keep]
    out_adv[idx], out_norm[idx] = best_adv, best_norm
    return out_adv, out_norm


@dataclass(frozen=True, kw_only=True)
class FAB(SweepAttack):
    """FAB. ``restarts`` runs per target (the first from the clean input, later ones from a random
    point at half the radius); each runs only on the samples not yet broken.

    ``x_adv`` is the smallest adversarial example found for broken samples and the clean input for
    the others (FAB's perturbations outside the budget are not returned).
    """

    name: ClassVar[str] = "fab"
    input_kind: ClassVar[str] = "image"

    steps: int = 100
    """Iterations per run."""
    restarts: int = 1
    """Runs per target: the first from the clean input, later ones from a random point."""
    alpha_max: float = 0.1
    """Largest weight of the step towards the clean input (FAB's biased gradient step)."""
    eta: float = 1.05
    """Extrapolation factor of each step beyond the linearised boundary."""
    beta: float = 0.9
    """Backward step towards the clean input after a success."""
    targeted: bool = False
    """Sweep the top ``n_targets`` classes of the clean prediction (FAB-T) instead of untargeted."""
    n_targets: int = 9
    """Target classes swept when ``targeted`` (9, or K-1 when K <= 10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_ints(self, "steps", "restarts", "n_targets")
        if not 0 <= self.alpha_max <= 1:
            raise ConfigError(f"{self.name}: alpha_max must be in [0, 1], got {self.alpha_max!r}")
        positive(self.eta, f"{self.name}: eta")
        if not 0 < self.beta <= 1:
            raise ConfigError(f"{self.name}: beta must be in (0, 1], got {self.beta!r}")

    def verdict(self, call: SweepCall, x_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        # in fp32, behind a bf16 fast path too
        return success & call.judge.verdict(x_adv, call.y, call.target, call.counter)

    def serial(self, call: SweepCall, plans: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (target, restart) run on the samples no earlier run broke; a sample keeps its first
        example within the budget, else the clean input."""
        x, threat = call.x, self.threat
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_adv = x.clone()
        for run in robust_runs(success, plans, self.restarts, call.generator, call.model, call.judge, x_adv):
            sel, tgt = run.sel, run.plan
            adv, norm = fab_run(
                run.model, x[sel], call.y[sel], threat, target=None if tgt is None else tgt[sel],
                steps=self.steps, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                random_start=run.restart > 0, generator=run.generator, counter=call.counter, judge=run.judge,
            )  # fmt: skip
            ok = run.keep & threat.within(adv - x[sel], tol=0.0) & torch.isfinite(norm)
            x_adv[sel[ok]] = x[sel[ok]] + threat.clip(x[sel[ok]], adv[ok] - x[sel[ok]])
            success[sel] = torch.where(run.keep, ok, success[sel])
        return x_adv, success

    def stacked(self, call: SweepCall, runs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (target, restart) run in one batch of ``len(runs) * B`` (GPU: fills the device).

        Restart 0 of a target starts from the clean input, restart r > 0 from sample i's next draw, as
        in the one-by-one loop; a sample's result is its first run that found an example within the
        budget: the one-by-one loop's result (with one generator per sample, as the runner gives).
        """
        x, threat = call.x, self.threat
        r, n = len(runs), x.shape[0]
        offsets = torch.cat(
            [
                torch.zeros_like(x) if restart == 0 else random_offset(x, threat, call.generator)
                for _, restart in runs
            ]
        )
        xs = repeat_runs(x, r)
        adv, norm = fab_run(
            call.model, xs, repeat_runs(call.y, r), threat, target=stacked_targets(runs), steps=self.steps,
            alpha_max=self.alpha_max, eta=self.eta, beta=self.beta, random_start=False, generator=None,
            counter=call.counter, offset=offsets, judge=call.judge,
        )  # fmt: skip
        ok = (threat.within(adv - xs, tol=0.0) & torch.isfinite(norm)).view(r, n)
        adv = pick_runs(adv, ok.float().argmax(0))
        found = ok.any(0)
        x_adv = x.clone()
        x_adv[found] = x[found] + threat.clip(x[found], adv[found] - x[found])
        return x_adv, found


@dataclass(frozen=True, kw_only=True)
class FABT(FAB):
    """FAB-T: targeted FAB over the top ``n_targets`` classes (AutoAttack's third stage)."""

    name: ClassVar[str] = "fab-t"
    targeted: bool = True


register("fab")(FAB)
register("fab-t")(FABT)
