"""BN-only adversarial fine-tuning (Walter, Stutz, Schiele 2022) and its controls.

Start from a normally trained BN network, freeze every parameter except the BatchNorm affine
parameters (gamma, beta; optionally the classifier) and run PGD adversarial training (L-inf 8/255,
10 steps of 2/255, random start) on those alone. BN running statistics adapt as in any training pass
(they are buffers, not parameters). Controls: the same BN-only training on frozen *random* weights
(``bn-random``), and full PGD-AT (``pgd-at``). Expected: full AT >> BN-only fine-tuning > BN-only from
random weights ~ 0.

The random-features control must learn something for its "~0 robust" to mean anything (the paper's
point is robust ~0 at non-trivial clean accuracy). BN affine parameters alone learn slowly (Frankle et al.
2021, "Training BatchNorm and Only BatchNorm", train them for 160 epochs): on shapes with the width-8
SmallResNet, clean BN-only training reaches 13% after 150 steps (16% with the classifier) and 34% after
1500 (40% with the classifier; ``benchmarks/bn_only_random.py``), and PGD-AT from the first step keeps
them at chance (10.0% clean on seeds 0-2 after 20 epochs at lr 1e-2, the previous claims run). So
``bn-random`` (``BN_RANDOM_SETTINGS``, named departures) trains the classifier too, at lr 3e-2, for 12
epochs of which the first half is clean (``TrainSettings.clean_phase``) before the eps ramp (a quarter of
the steps) and full PGD-AT (three seeds in ``reports/examples/claims.md``).
Its clean accuracy is stored with it like every recipe's (``info["clean_test_accuracy"]``) and the claims
table calls the control vacuous if it stays near chance.
Architectures: any network with BatchNorm layers (robustkit's SmallResNet by default,
``torchvision:resnet18``, timm's BN ResNets); a network without BatchNorm is a ``ConfigError``. The
fine-tuning starts from ``--init`` or the cached ``standard`` network, which must be of the same
architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models.normalized import Normalized
from ..training.data import DataSpec
from ..training.settings import TrainSettings
from .base import Context, register_defense
from .baselines import PGD_AT_EPOCHS, MadryAT, build_with_batchnorm
from .loading import load_weights


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
    if ctx.init is not None:  # the inner network's weights, or a robustkit-trained model's (``model.*``)
        load_weights(model, ctx.init)
        return {"init": str(ctx.init)}
    trained = ctx.load("standard")
    state = (trained.model if isinstance(trained, Normalized) else trained).state_dict()
    if state.keys() != inner.state_dict().keys() or any(
        v.shape != inner.state_dict()[k].shape for k, v in state.items()
    ):
        raise ConfigError(
            f"the cached standard network of '{ctx.dataset}' is robustkit's default architecture, not this "
            "one: train standard with the same --arch and pass its weights with --init"
        )
    inner.load_state_dict(state)
    return {"init": "defense:standard"}


BN_PAPER = "Walter, Stutz, Schiele 2022, On Fragile Features and Batch Normalization in Adversarial Training"
BN_SETTINGS = TrainSettings(epochs=2, eps=8 / 255, steps=10, step_size=2 / 255, eps_warmup=0.4)
# BN affine parameters (and the classifier) alone on frozen random features: half the steps clean, then
# the eps ramp over a quarter, then full PGD-AT (adversarial from the first step, they stay at chance).
BN_RANDOM_SETTINGS = TrainSettings(
    epochs=12, lr=3e-2, eps=8 / 255, steps=10, step_size=2 / 255, clean_phase=0.5, eps_warmup=0.25
)
BN_PUBLISHED = {"ordering": "full AT >> BN-only fine-tuning > BN-only from random weights ~ 0"}
BN_DEPARTURES = (
    "scale: robustkit's BN SmallResNet (width 8) on 2400 built-in 32x32 images instead of a CIFAR-10 "
    "ResNet; Adam with linear warm-up/decay and an eps warm-up (bn-finetune: over the first 40% of the steps)",
    "budgets: standard 4 clean epochs, then bn-finetune 2 adversarial epochs (lr 5e-3); pgd-at "
    f"{PGD_AT_EPOCHS} adversarial epochs on every parameter",
    "bn-random trains the classifier too and starts with a clean phase: 12 epochs at lr 3e-2, the first 6 on "
    "clean batches, then the eps ramp over 3 epochs, then full PGD-AT (PGD-AT from the first step left the "
    "random width-8 features at chance on seeds 0-2: 10.0% clean after 20 epochs)",
)


@dataclass(frozen=True, kw_only=True)
class BNOnlyAT(MadryAT):
    """PGD-AT of the BatchNorm affine parameters alone (and the classifier's with ``classifier``),
    starting from the trained ``standard`` network (``pretrained``) or from frozen random weights."""

    classifier: bool = False
    pretrained: bool = True
    settings: TrainSettings = BN_SETTINGS
    paper: str = BN_PAPER
    departures: tuple[str, ...] = BN_DEPARTURES
    published: dict[str, Any] = field(default_factory=lambda: dict(BN_PUBLISHED))

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return build_with_batchnorm(spec, settings, self.name)

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return bn_parameters(model, classifier=self.classifier)

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        start = from_standard(model, ctx) if self.pretrained else {"init": "random"}
        return {**start, **super().prepare(model, ctx)}


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
        description="Control: BN-only PGD-AT (and the classifier) on frozen random weights, after a clean phase.",
        pretrained=False,
        classifier=True,
        settings=BN_RANDOM_SETTINGS,
    )
)
