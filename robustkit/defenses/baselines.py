"""Baselines: standard training and Madry PGD adversarial training (L-inf 8/255, 10 steps of 2/255), and
``AdversarialRecipe``, the base of every adversarial recipe (its reduced-scale ``departures``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..training.data import DataSpec
from ..training.settings import StepContext, TrainSettings
from .adversarial import adversarial_batch, training_ce
from .backbones import build_backbone, normalized
from .base import Context, DefenseRecipe, register_defense


def madry_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Cross-entropy (with the settings' label smoothing) on the inner attack's examples only."""
    return training_ce(model(adversarial_batch(model, x, y, ctx)), y, ctx)


def build_with_batchnorm(spec: DataSpec, settings: TrainSettings, recipe: str) -> nn.Module:
    """``settings.arch`` (robustkit's BN SmallResNet by default) behind the input normalization; a
    ``ConfigError`` if it has no BatchNorm layer (a recipe about BatchNorm cannot use it)."""
    net = build_backbone(spec, settings.arch, width=settings.width, drop_path=settings.drop_path)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ConfigError(
            f"{recipe} needs a network with BatchNorm layers; '{settings.arch}' has none (e.g. use "
            "torchvision:resnet18 or small-resnet; normalizer-free networks train with nofrost)"
        )
    return normalized(net, spec.channels)


@dataclass(frozen=True, kw_only=True)
class AdversarialRecipe(DefenseRecipe):
    """A recipe with an inner attack. ``departures``: what it changes from the paper's recipe at
    robustkit's reduced scale; stored with the trained model (``info["prepared"]["departures"]``)."""

    departures: tuple[str, ...] = ()

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        return {"departures": list(self.departures)}


@dataclass(frozen=True, kw_only=True)
class MadryAT(AdversarialRecipe):
    """PGD adversarial training: cross-entropy on the inner attack's examples only."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return madry_loss(model, x, y, ctx)


MADRY_PAPER = "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks"
# The full-AT reference of the BN-only comparison: as many adversarial steps as the standard network's
# training plus bn-finetune's together (PGD_AT_EPOCHS = 4 + 2), all of them on every parameter.
PGD_AT_EPOCHS = 6

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
        settings=TrainSettings(
            epochs=PGD_AT_EPOCHS, eps=8 / 255, steps=10, step_size=2 / 255, eps_warmup=0.6
        ),
        paper=MADRY_PAPER,
        departures=(
            f"scale: {PGD_AT_EPOCHS} epochs of 2400 built-in 32x32 images, Adam (lr 5e-3, linear warm-up and "
            "decay) instead of SGD for ~100 CIFAR-10 epochs",
            "eps warm-up: the training eps ramps from 0 to 8/255 over the first 60% of the steps (over 40%, "
            "seed 1 of 3 stayed at chance on shapes: 12% clean; over 60%, 99% on seeds 0-2)",
            "network: robustkit's BN SmallResNet (width 8) unless --arch",
        ),
        published={
            "dataset": "CIFAR-10 (ABNN paper)",
            "clean": 0.833,
            "pgd": 0.516,
            "training_cost_passes": 12,
        },
    )
)
