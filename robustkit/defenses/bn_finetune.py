"""BN-only adversarial fine-tuning (Walter, Stutz, Schiele 2022) and its controls.

Start from a normally trained BN network, freeze every parameter except the BatchNorm affine
parameters (gamma, beta; optionally the classifier) and run PGD adversarial training (L-inf 8/255,
10 steps of 2/255, random start) on those alone. BN running statistics adapt as in any training pass
(they are buffers, not parameters). Controls: the same BN-only training on frozen *random* weights
(``bn-random``), and full PGD-AT (``pgd-at``). Expected: full AT >> BN-only fine-tuning > BN-only from
random weights ~ 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..models.checkpoint import load_into
from ..models.normalized import Normalized
from .base import Context, DefenseRecipe, TrainSettings, register_defense
from .baselines import madry_loss


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

register_defense(
    DefenseRecipe(
        name="bn-finetune",
        description="BN-only PGD-AT fine-tuning of the trained standard network (gamma, beta only).",
        loss=madry_loss,
        trainable=bn_parameters,
        prepare=from_standard,
        settings=BN_SETTINGS,
        paper=BN_PAPER,
        published=BN_PUBLISHED,
    )
)
register_defense(
    DefenseRecipe(
        name="bn-finetune-fc",
        description="BN-only PGD-AT fine-tuning that also trains the classifier.",
        loss=madry_loss,
        trainable=lambda m: bn_parameters(m, classifier=True),
        prepare=from_standard,
        settings=BN_SETTINGS,
        paper=BN_PAPER,
        published=BN_PUBLISHED,
    )
)
register_defense(
    DefenseRecipe(
        name="bn-random",
        description="Control: BN-only PGD-AT on frozen random weights.",
        loss=madry_loss,
        trainable=bn_parameters,
        settings=BN_SETTINGS,
        paper=BN_PAPER,
        published=BN_PUBLISHED,
    )
)
