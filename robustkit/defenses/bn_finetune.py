"""BN-only adversarial fine-tuning (Walter, Stutz, Schiele 2022) and its controls.

Start from a normally trained BN network, freeze every parameter except the BatchNorm affine
parameters (gamma, beta; optionally the classifier) and run PGD adversarial training (L-inf 8/255,
10 steps of 2/255, random start) on those alone. BN running statistics adapt as in any training pass
(they are buffers, not parameters). Controls: the same BN-only training on frozen *random* weights
(``bn-random``), and full PGD-AT (``pgd-at``). Expected: full AT >> BN-only fine-tuning > BN-only from
random weights ~ 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..models.checkpoint import load_into
from ..models.normalized import Normalized
from ..training.settings import TrainSettings
from .base import Context, register_defense
from .baselines import MadryAT


def bn_parameters(model: nn.Module, *, classifier: bool = False) -> list[nn.Parameter]:
    """The affine parameters of every BatchNorm layer (and the final linear layer's with ``classifier``)."""
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            params += [m.weight, m.bias]
    if classifier:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            params += list(linears[-1].parameters())
    return params


def from_standard(model: nn.Module, ctx: Context) -> dict[str, Any]:
    """Initial weights: ``--init PATH`` or the trained ``standard`` defense of the dataset."""
    inner = model.model if isinstance(model, Normalized) else model
    if ctx.init is not None:
        load_into(inner, ctx.init)
        return {"init": str(ctx.init)}
    trained = ctx.load("standard")
    inner.load_state_dict((trained.model if isinstance(trained, Normalized) else trained).state_dict())
    return {"init": "defense:standard"}


BN_PAPER = "Walter, Stutz, Schiele 2022, On Fragile Features and Batch Normalization in Adversarial Training"
BN_SETTINGS = TrainSettings(epochs=2, eps=8 / 255, steps=10, step_size=2 / 255, eps_warmup=0.4)
BN_PUBLISHED = {"ordering": "full AT >> BN-only fine-tuning > BN-only from random weights ~ 0"}


@dataclass(frozen=True, kw_only=True)
class BNOnlyAT(MadryAT):
    """PGD-AT of the BatchNorm affine parameters alone (and the classifier's with ``classifier``),
    starting from the trained ``standard`` network (``pretrained``) or from frozen random weights."""

    classifier: bool = False
    pretrained: bool = True
    settings: TrainSettings = BN_SETTINGS
    paper: str = BN_PAPER
    published: dict[str, Any] = field(default_factory=lambda: dict(BN_PUBLISHED))

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return bn_parameters(model, classifier=self.classifier)

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        return from_standard(model, ctx) if self.pretrained else {}


register_defense(
    BNOnlyAT(
        name="bn-finetune",
        description="BN-only PGD-AT fine-tuning of the trained standard network (gamma, beta only).",
    )
)
register_defense(
    BNOnlyAT(
        name="bn-finetune-fc",
        description="BN-only PGD-AT fine-tuning that also trains the classifier.",
        classifier=True,
    )
)
register_defense(
    BNOnlyAT(
        name="bn-random",
        description="Control: BN-only PGD-AT on frozen random weights.",
        pretrained=False,
    )
)
