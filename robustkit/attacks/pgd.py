"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015), L-inf and L2.

PGD keeps, per sample, the first iterate that succeeds; restarts run only on samples that are still
robust. Nothing in the step loop synchronizes with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..functional.losses import get_loss
from ..functional.random import GeneratorLike, subset
from ..threat import Linf, ThreatModel, make_threat
from .base import (
    Attack,
    AttackResult,
    Counter,
    Judge,
    choose_targets,
    forward,
    is_success,
    loss_and_grad,
    pick_runs,
    positive,
    register,
    repeat_runs,
    resolve_targets,
    stack_in_batch,
    stacked_or_none,
)


def _objective(
    loss: str, y: torch.Tensor, target: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = get_loss(loss)
    return lambda logits: fn(logits, y, target)


def gradient_ascent(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    objective: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor | None,
    start: torch.Tensor,
    counter: Counter,
    objective_at: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    mask: torch.Tensor | None = None,
    judge: Judge | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared PGD loop. Returns (x_adv, success): per sample the first successful iterate, else
    the last one.

    ``start`` is the starting point; the loop projects it onto the threat ball around ``x`` and then
    takes it over as its state (the caller hands over a tensor of its own, e.g. ``x + init``). The
    state is that one input-sized buffer, the current iterate, updated in place; a sample is frozen
    (its step scaled by 0) from the step it first succeeds, so the buffer ends up holding the result
    without a copy of the best iterate. Beside one bare forward+backward the loop holds that buffer and
    nothing else the size of the input: the step and the projection bounds are computed in the
    memory of the gradient. Fresh input-sized allocations each step would also cost page faults on
    CPU, which is why everything is in place.

    ``mask`` (broadcastable to ``x``, per sample; e.g. the frames a video attack may change) zeroes
    the gradient outside it, so the iterate never moves there: where ``start`` equals ``x`` those
    entries stay bit-identical to ``x``.

    ``judge`` (default: the exact criterion on ``model``) decides success. Behind a bf16 fast path its
    criterion has a margin (``judge.tentative``): a sample is frozen only once it is adversarial by a
    margin bf16 rounding cannot fake, and the final verdict is an fp32 forward pass.

    With ``objective_at`` (indices of the samples still in the working batch -> their objective),
    the loop compacts: after 2, 4, 8, ... steps (never after the last) it counts the samples done,
    one host synchronization per check, stops when all are done, and drops the done ones from the
    working batch once they are a quarter of it. Results are those of the uncompacted loop.
    """
    n = x.shape[0]
    judge = judge or Judge.of(model)
    y_all, target_all = y, target  # the working batch shrinks when it compacts
    x_adv = _project(threat, x, start)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    out, out_found, live = x_adv, found, None  # live: working-batch indices once compacted
    for i in range(steps):
        _, logits, grad = loss_and_grad(model, x_adv, objective, counter)
        found |= judge(logits, y, target)
        del logits
        if mask is not None:
            grad.mul_(mask)
        _step(threat, x, x_adv, grad, step_size, found)
        del grad
        if objective_at is None or i == 0 or i >= steps - 1 or (i + 1) & i:
            continue
        n_done = int(found.sum())  # the only host synchronizations of the loop: log2(steps) checks
        if n_done == found.numel():
            break
        if 4 * n_done >= found.numel():
            if live is None:
                out_found, live = found.clone(), torch.arange(n, device=x.device)
            else:
                out[live[found]], out_found[live[found]] = x_adv[found], True
            keep = ~found
            live, x, y, x_adv, found = live[keep], x[keep], y[keep], x_adv[keep], found[keep]
            target = target[keep] if target is not None else None
            mask = mask[keep] if mask is not None and mask.shape[0] == keep.shape[0] else mask
            objective = objective_at(live)
    else:  # the last iterate of the samples still running: one more forward pass
        if not judge.tentative:
            with torch.no_grad():
                found |= is_success(forward(model, x_adv, counter), y, target)
    adv, success = _merge(out, out_found, live, x_adv, found)
    if judge.tentative:  # behind a bf16 fast path: the verdict on every result in fp32
        success = judge.verdict(adv, y_all, target_all, counter)
    return adv, success


def _project(threat: ThreatModel, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``point`` moved into the threat ball around ``x`` and the [0, 1] box, in place for L-inf. The
    L-inf projection is idempotent bit for bit (min/max against the same bounds), which is what lets
    a frozen sample stay exactly where it succeeded."""
    if type(threat) is Linf:
        bound = torch.sub(x, threat.eps).clamp_(min=0.0)
        torch.maximum(point, bound, out=point)
        torch.add(x, threat.eps, out=bound).clamp_(max=1.0)
        return torch.minimum(point, bound, out=point)
    return x + threat.clip(x, point - x)


def _step(
    threat: ThreatModel,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    step: float,
    frozen: torch.Tensor,
) -> None:
    """One projected ascent step of ``x_adv`` in place; samples in ``frozen`` do not move. L-inf
    allocates nothing the size of the input: the direction and then the bounds live in ``grad``."""
    scale = (~frozen).to(x_adv.dtype).mul_(step).view(-1, *([1] * (x_adv.ndim - 1)))
    if type(threat) is Linf:
        x_adv.addcmul_(grad.sign_(), scale)
        torch.sub(x, threat.eps, out=grad).clamp_(min=0.0)
        torch.maximum(x_adv, grad, out=x_adv)
        torch.add(x, threat.eps, out=grad).clamp_(max=1.0)
        torch.minimum(x_adv, grad, out=x_adv)
        return
    moved = x + threat.clip(x, threat.direction(grad).mul_(scale).add_(x_adv).sub_(x))
    x_adv.copy_(torch.where(frozen.view_as(scale), x_adv, moved))


def _merge(out, out_found, live, x_adv, found) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the working batch back into the full-batch buffers (identity when never compacted)."""
    if live is None:
        return x_adv.detach(), found
    out[live], out_found[live] = x_adv, found
    return out.detach(), out_found


@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """PGD with random start and restarts.

    ``step_size`` defaults to 2.5 * eps / steps. ``targeted`` uses ``target`` passed at call time,
    else picks targets by ``target_mode`` ('random', 'least-likely' or a class index).
    """

    norm: str = "Linf"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    targeted: bool = False
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        make_threat(self.norm, self.eps)
        positive(self.steps, "steps")
        positive(self.restarts, "restarts")
        if self.step_size is not None:
            positive(self.step_size, "step_size")
        get_loss(self.loss)

    @property
    def threat(self) -> ThreatModel:
        return make_threat(self.norm, self.eps)

    def _targets(self, model, x, y, target, generator, counter) -> torch.Tensor | None:
        return resolve_targets(
            model,
            x,
            y,
            target,
            targeted=self.targeted,
            mode=self.target_mode,
            generator=generator,
            counter=counter,
        )

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None, judge=None) -> AttackResult:
        counter = Counter()
        threat = self.threat
        target = self._targets(model, x, y, target, generator, counter)
        if self.eps == 0:
            success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            return AttackResult(x_adv=x.clone(), success=success, counters=counter.as_dict())
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        if self.restarts > 1 and stack_in_batch(x):
            stacked = stacked_or_none(
                lambda: self._stacked(model, x, y, target, generator, counter, threat, step, judge), generator
            )
            if stacked is not None:
                return stacked
        for restart in range(self.restarts):
            if restart == 0:  # the whole batch: no copies
                start = self._start(x, threat, generator)
                adv, ok = self._ascend(model, x, y, target, start, threat, step, counter, judge)
                if self.restarts == 1:
                    return AttackResult(x_adv=adv, success=ok, counters=counter.as_dict())
                x_adv, success = adv, ok
                continue
            todo = ~success
            if not bool(todo.any()):
                break
            idx = todo.nonzero()[:, 0]
            xs, ys = x[idx], y[idx]
            ts = target[idx] if target is not None else None
            gens = subset(generator, todo)
            adv, ok = self._ascend(
                model, xs, ys, ts, self._start(xs, threat, gens), threat, step, counter, judge
            )
            x_adv[idx] = adv
            success[idx] = ok
        return AttackResult(x_adv=x_adv, success=success, counters=counter.as_dict())

    def _start(self, x: torch.Tensor, threat: ThreatModel, generator: GeneratorLike) -> torch.Tensor:
        """A fresh starting point: ``x`` plus a random draw from the ball, or a copy of ``x``."""
        return threat.init(x, generator).add_(x) if self.random_start else x.clone()

    def _ascend(
        self, model, xs, ys, ts, start, threat, step, counter, judge=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def objective_at(live: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return _objective(self.loss, ys[live], ts[live] if ts is not None else None)

        return gradient_ascent(
            model,
            xs,
            ys,
            threat,
            steps=self.steps,
            step_size=step,
            objective=_objective(self.loss, ys, ts),
            target=ts,
            start=start,
            counter=counter,
            objective_at=objective_at,
            judge=judge,
        )

    def _stacked(self, model, x, y, target, generator, counter, threat, step, judge=None) -> AttackResult:
        """All restarts in one batch of ``restarts * B`` (GPU: fills the device with small batches).

        Restart r of sample i starts from the r-th draw of sample i's generator, as in the one-by-one
        loop, and a sample's result is its first successful restart, else its last restart: the same
        result as running the restarts one after the other on the samples still robust.
        """
        r, n = self.restarts, x.shape[0]
        starts = [self._start(x, threat, generator) for _ in range(r)]
        ts = repeat_runs(target, r) if target is not None else None
        adv, ok = self._ascend(
            model, repeat_runs(x, r), repeat_runs(y, r), ts, torch.cat(starts), threat, step, counter, judge
        )
        ok = ok.view(r, n)
        first = torch.where(ok.any(0), ok.float().argmax(0), r - 1)  # first successful restart, else last
        return AttackResult(x_adv=pick_runs(adv, first), success=ok.any(0), counters=counter.as_dict())


@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """One signed-gradient (L-inf) or normalized-gradient (L2) step of size eps from the clean input."""

    norm: str = "Linf"
    eps: float = 8 / 255
    loss: str = "ce"
    targeted: bool = False
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        make_threat(self.norm, self.eps)
        get_loss(self.loss)

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        threat = make_threat(self.norm, self.eps)
        if self.targeted and target is None:
            with torch.no_grad():
                target = choose_targets(forward(model, x, counter), y, self.target_mode, generator)
        if not self.targeted:
            target = None
        _, _, grad = loss_and_grad(model, x, _objective(self.loss, y, target), counter)
        x_adv = x + threat.clip(x, self.eps * threat.direction(grad))
        with torch.no_grad():
            logits = forward(model, x_adv, counter)
        return AttackResult(
            x_adv=x_adv.detach(),
            success=is_success(logits, y, target),
            logits=logits,
            counters=counter.as_dict(),
        )


register("pgd")(PGD)
register("fgsm")(FGSM)
