"""Optimizers and learning-rate schedules of the training loop.

A schedule is bound to an optimizer once (``bind``) and then called with the index of the step about to
run; it puts that step's learning rate (and momentum, for one-cycle) into the optimizer. Every schedule
here depends only on the step index, so a resumed run continues exactly where it stopped.
``schedule_for(settings)`` is the one ``TrainSettings.schedule`` names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .settings import TrainSettings


class Schedule(Protocol):
    def bind(self, opt: torch.optim.Optimizer, peak: float, total: int) -> Callable[[int], None]:
        """Return ``before(step)``: set the optimizer's hyper-parameters for step ``step`` of ``total``."""
        ...


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear ramp over the first ``warmup`` fraction of steps, then linear decay to zero."""
    warm = max(1, int(round(total * warmup)))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def cosine_lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear ramp over the first ``warmup`` fraction of steps (as ``lr_at``), then a half cosine from
    ``peak`` to zero (reached one step after the last)."""
    warm = max(1, int(round(total * warmup)))
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupLinear:
    """``lr_at``: linear warm-up over a ``warmup`` fraction of the steps, then linear decay to zero."""

    warmup: float = 0.1

    @staticmethod
    def lr(step: int, total: int, peak: float, warmup: float) -> float:
        return lr_at(step, total, peak, warmup)

    def bind(self, opt: torch.optim.Optimizer, peak: float, total: int) -> Callable[[int], None]:
        def before(step: int) -> None:
            for group in opt.param_groups:
                group["lr"] = self.lr(step, total, peak, self.warmup)

        return before


@dataclass(frozen=True)
class WarmupCosine(WarmupLinear):
    """``cosine_lr_at``: linear warm-up over a ``warmup`` fraction of the steps, then cosine decay to zero."""

    @staticmethod
    def lr(step: int, total: int, peak: float, warmup: float) -> float:
        return cosine_lr_at(step, total, peak, warmup)


def schedule_for(settings: TrainSettings) -> Schedule:
    """The schedule ``settings.schedule`` names, with ``settings.warmup``."""
    return (WarmupCosine if settings.schedule == "cosine" else WarmupLinear)(settings.warmup)


@dataclass(frozen=True)
class OneCycle:
    """torch's ``OneCycleLR`` (learning rate and momentum), ``pct_start`` of the steps rising."""

    pct_start: float = 0.25

    def bind(self, opt: torch.optim.Optimizer, peak: float, total: int) -> Callable[[int], None]:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=max(total, 1), pct_start=self.pct_start
        )  # sets the values of step 0

        def before(step: int) -> None:
            while sched.last_epoch < step:  # once per step; several after a resume
                sched.step()

        return before


def make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov and settings.momentum > 0,
        weight_decay=settings.weight_decay,
    )
