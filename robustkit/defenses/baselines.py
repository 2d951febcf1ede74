"""Baselines: standard training and Madry PGD adversarial training (L-inf 8/255, 10 steps of 2/255)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..training.settings import StepContext, TrainSettings
from .adversarial import pgd_examples
from .base import DefenseRecipe, register_defense


def madry_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    eps, step_size = ctx.budget()
    x_adv = pgd_examples(
        model, x, y, eps=eps, steps=ctx.settings.steps, step_size=step_size, generator=ctx.generator
    )
    return F.cross_entropy(model(x_adv), y)


@dataclass(frozen=True, kw_only=True)
class MadryAT(DefenseRecipe):
    """PGD adversarial training: cross-entropy on the inner attack's examples only."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return madry_loss(model, x, y, ctx)


MADRY_PAPER = "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks"

register_defense(
    DefenseRecipe(
        name="standard",
        description="Standard training (cross-entropy on clean data), the undefended baseline.",
        settings=TrainSettings(epochs=4),
        published={"dataset": "CIFAR-10 (ABNN paper)", "clean": 0.934, "pgd": 0.0, "training_cost_passes": 2},
    )
)
register_defense(
    MadryAT(
        name="pgd-at",
        description="Madry PGD adversarial training: CE on L-inf PGD-10 examples (eps 8/255, step 2/255, random start).",
        settings=TrainSettings(epochs=4, eps=8 / 255, steps=10, step_size=2 / 255, eps_warmup=0.4),
        paper=MADRY_PAPER,
        published={
            "dataset": "CIFAR-10 (ABNN paper)",
            "clean": 0.833,
            "pgd": 0.516,
            "training_cost_passes": 12,
        },
    )
)
