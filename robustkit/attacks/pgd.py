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
from ..threat import ThreatModel, make_threat
from .base import (
    Attack,
    AttackResult,
    Counter,
    choose_targets,
    forward,
    is_success,
    loss_and_grad,
    positive,
    register,
)


def _objective(
    loss: str, y: torch.Tensor, target: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = get_loss(loss)
    return lambda logits: fn(logits, y, target)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


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
    delta: torch.Tensor,
    counter: Counter,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared PGD loop. Returns (x_adv, success): first successful iterate, else the last one."""
    best = x + delta
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        _, logits, grad = loss_and_grad(model, x + delta, objective, counter)
        hit = is_success(logits, y, target) & ~found
        best = _where(hit, x + delta, best)
        found = found | hit
        delta = threat.clip(x, delta + step_size * threat.direction(grad))
    with torch.no_grad():
        logits = forward(model, x + delta, counter)
    hit = is_success(logits, y, target) & ~found
    best = _where(hit | ~found, x + delta, best)
    return best.detach(), found | hit


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
        if not self.targeted:
            return None
        if target is not None:
            return target
        with torch.no_grad():
            logits = forward(model, x, counter)
        return choose_targets(logits, y, self.target_mode, generator)

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        threat = self.threat
        target = self._targets(model, x, y, target, generator, counter)
        x_adv = x.clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.eps == 0:
            return AttackResult(x_adv=x_adv, success=success, counters=counter.as_dict())
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        for restart in range(self.restarts):
            todo = ~success if restart else torch.ones_like(success)
            if restart and not bool(todo.any()):
                break
            idx = todo.nonzero()[:, 0]
            xs, ys = x[idx], y[idx]
            ts = target[idx] if target is not None else None
            gens = subset(generator, todo)
            delta = threat.clip(xs, threat.init(xs, gens)) if self.random_start else torch.zeros_like(xs)
            adv, ok = gradient_ascent(
                model,
                xs,
                ys,
                threat,
                steps=self.steps,
                step_size=step,
                objective=_objective(self.loss, ys, ts),
                target=ts,
                delta=delta,
                counter=counter,
            )
            x_adv[idx] = adv
            success[idx] = ok
        return AttackResult(x_adv=x_adv, success=success, counters=counter.as_dict())


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
