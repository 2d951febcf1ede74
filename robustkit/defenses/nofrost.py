"""NoFrost (Wang et al. 2022, "Removing Batch Normalization Boosts Adversarial Training") on timm's own
normalizer-free ResNets.

The network is timm's ``NormFreeNet`` (``timm.models.nfnet``): by name ``arch="timm:nf_resnet26"`` or
``"timm:nf_resnet50"`` (the paper's network), or, by default, ``rk_nf_resnet_small``: an NF-ResNet config
built with timm's model-config API (``NfCfg``, ``NormFreeNet``) scaled down for 32x32 images on a CPU
(``nf_resnets``; ``NF_SMALL_DEPARTURES`` lists what differs from ``nf_resnet26``). It is registered
with timm, so ``timm.create_model("rk_nf_resnet_small")`` and ``arch="timm:rk_nf_resnet_small"`` build
it too. A network with normalization layers is a ``ConfigError`` (train it with ``bn-at``).

``nofrost-official`` trains as the official code does (``PGDAT.py`` of
amazon-science/normalizer-free-robust-training): ``0.5 * CE(clean) + 0.5 * CE(adversarial)`` with label
smoothing 0.1, PGD-10 L-inf eps 8/255 with step ``min(1.25 eps, eps + 4/255) / steps = 1/255`` from a
random start, generated with the model in eval mode (``attack_mode="eval"``), SGD with Nesterov momentum
0.9, lr 0.1 x batch/256, weight decay 5e-5, a cosine schedule without warm-up, dropout 0.25 before the
classifier and drop path 0.1, 90 epochs of 256. ``nofrost`` keeps the loss, attack, schedule and
regularizers at robustkit's CPU scale; what it changes (Adam, lr and eps warm-up, scale, network,
per-image centering) is named in its ``departures``, stored with the trained model
(``info["prepared"]["departures"]``).

The same hybrid recipe on a BN network is the BN-based AT control (``bn-at``): there BN statistics are
estimated on the clean/adversarial mixture (one forward pass over the concatenated batch), the effect
NoFrost removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..training.data import DataSpec
from ..training.seeding import fixed_seed
from ..training.settings import StepContext, TrainSettings
from .adversarial import adversarial_batch, training_ce
from .backbones import build_backbone, normalized
from .base import register_defense
from .baselines import AdversarialRecipe, build_with_batchnorm
from .nf_resnets import (
    NF_SMALL,
    NF_SMALL_DEPARTURES,
    center_input,
    nf_resnet_small,
    normalization_layers,
)


def build_nf(
    spec: DataSpec, settings: TrainSettings, *, drop_rate: float = 0.0, centered: bool = False
) -> nn.Module:
    """NoFrost's network for ``spec`` (input normalization inside): ``rk_nf_resnet_small`` of
    ``settings.width`` when ``settings.arch`` is None, else ``settings.arch``, which must be free of
    normalization layers (``timm:nf_resnet26``, ``timm:nf_resnet50``, another timm NF net, or a user's).
    ``centered``: per-image input centering (``center_input``) in front of a timm NF net's stem."""
    if spec.video:
        raise ConfigError(f"NoFrost's NF-ResNets are 2-D; dataset '{spec.name}' holds video clips")
    if settings.arch is None:
        with fixed_seed(0):
            net = nf_resnet_small(
                spec.num_classes,
                spec.channels,
                width=settings.width,
                drop_rate=drop_rate,
                drop_path_rate=settings.drop_path,
            )
    else:
        net = build_backbone(spec, settings.arch, width=settings.width, drop_path=settings.drop_path)
        norms = normalization_layers(net)
        if norms:
            raise ConfigError(
                f"NoFrost trains normalizer-free networks; '{settings.arch}' has normalization layers "
                f"({', '.join(norms[:3])}, ...): use timm:nf_resnet26, timm:nf_resnet50 or "
                f"timm:{NF_SMALL}, or the bn-at recipe for a BN network"
            )
        head = getattr(net, "head", None)
        if isinstance(getattr(head, "drop", None), nn.Dropout):  # timm's pre-classifier dropout
            head.drop.p = drop_rate
    if centered:
        from timm.models.nfnet import NormFreeNet

        if not isinstance(net, NormFreeNet):
            raise ConfigError(f"input centering is an option of timm's NF nets, not of '{settings.arch}'")
        center_input(net)
    return normalized(net, spec.channels)


def hybrid_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """0.5 * CE(clean) + 0.5 * CE(adversarial), each with the settings' label smoothing, in one forward pass
    over the concatenated batch (so a BN network estimates its statistics on the clean/adversarial
    mixture). The adversarial examples come from ``adversarial_batch`` (``settings.attack_mode``)."""
    x_adv = adversarial_batch(model, x, y, ctx)
    logits = model(torch.cat([x, x_adv]))
    n = x.shape[0]
    return 0.5 * training_ce(logits[:n], y, ctx) + 0.5 * training_ce(logits[n:], y, ctx)


# Bumped whenever the network or recipe changes in a way the settings do not show (part of the cache key).
# 3: timm's own NormFreeNet (rk_nf_resnet_small), official recipe (v2: hand-built NF-ResNet, Adam).
NF_VERSION = "3"
NOFROST_PAPER = "Wang et al. 2022, Removing Batch Normalization Boosts Adversarial Training (ICML)"
# The official recipe (PGDAT.py): SGD + Nesterov (momentum 0.9), lr 0.1 x batch/256, weight decay 5e-5,
# cosine decay without warm-up, label smoothing 0.1, drop path 0.1, dropout 0.25, eval-mode PGD-10 of
# step 1/255 at eps 8/255, 90 epochs of batch 256 (robustkit: ``nofrost-official``).
OFFICIAL_SETTINGS = TrainSettings(
    epochs=90,
    batch_size=256,
    optimizer="sgd",
    nesterov=True,
    momentum=0.9,
    lr=0.1,
    weight_decay=5e-5,
    schedule="cosine",
    warmup=0.0,
    label_smoothing=0.1,
    drop_path=0.1,
    attack_mode="eval",
    eps=8 / 255,
    steps=10,
    step_size=1 / 255,
    train_size=None,
)
OFFICIAL_DEPARTURES = (
    "network: rk_nf_resnet_small unless --arch timm:nf_resnet50 (the paper's network)",
    "data: the built-in data set unless a manifest of ImageNet is given",
)
# robustkit's CPU scale: the official loss, attack, schedule and regularizers; what differs is named in
# NOFROST_DEPARTURES (measured on shapes, 300 steps of clean training of rk_nf_resnet_small: SGD +
# Nesterov at lr 0.1 stays at chance, 0.05 reaches 44% clean accuracy, Adam 5e-3 88%).
NOFROST_SETTINGS = replace(
    OFFICIAL_SETTINGS,
    epochs=4,
    batch_size=32,
    train_size=2400,
    optimizer="adam",
    lr=5e-3,
    warmup=0.1,
    eps_warmup=0.4,
)
NOFROST_DEPARTURES = (
    "scale: 4 epochs (300 steps) of 2400 built-in 32x32 images in batches of 32 instead of 90 ImageNet "
    "epochs of 256",
    "optimizer: Adam at lr 5e-3 (cosine, no warm-up, weight decay 5e-5) instead of SGD + Nesterov at "
    "lr 0.1 x batch/256: within 300 steps SGD leaves the network near chance even on clean data",
    "lr warm-up: linear over the first 10% of the steps, then cosine (Adam at the full rate from the first "
    "step left the BN control at chance in 2 of 2 runs)",
    "eps warm-up: the training eps (and step) ramps from 0 to 8/255 over the first 40% of the steps (PGD "
    "training at the full eps from the first step stays at chance within a few hundred steps)",
)
CENTER_DEPARTURE = (
    "per-image input centering before the stem (CenterImage): without it the stem output of a shapes "
    "image is dominated by its random background colour and the NF net learns slowly (300 clean Adam "
    "steps: 52% clean accuracy without, 88% with)"
)
NOFROST_PUBLISHED = {
    "dataset": "ImageNet, ResNet-50",
    "clean": 0.7406,
    "pgd": 0.2356,
    "standard": {"clean": 0.7606},
    "bn-at": {"clean": 0.5928, "pgd": 0.1357},
}


@dataclass(frozen=True, kw_only=True)
class HybridAT(AdversarialRecipe):
    """The NoFrost recipe: hybrid clean/adversarial training (``hybrid_loss``) of a normalizer-free network
    (``build_nf``), or of a BN network with ``normalizer_free=False`` (the BN-based AT control,
    ``baselines.build_with_batchnorm``). ``drop_rate``: dropout before the classifier of a timm network;
    ``center_input``: per-image input centering in front of a timm NF net (``CenterImage``);
    ``departures`` (``AdversarialRecipe``): what the recipe changes from the official one at robustkit's
    scale."""

    normalizer_free: bool = True
    drop_rate: float = 0.25
    center_input: bool = False
    settings: TrainSettings = NOFROST_SETTINGS
    paper: str = NOFROST_PAPER
    published: dict[str, Any] = field(default_factory=lambda: dict(NOFROST_PUBLISHED))

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        if self.normalizer_free:
            return build_nf(spec, settings, drop_rate=self.drop_rate, centered=self.center_input)
        return build_with_batchnorm(spec, settings, self.name)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return hybrid_loss(model, x, y, ctx)


register_defense(
    HybridAT(
        name="nofrost",
        description="NoFrost: timm NF-ResNet (rk_nf_resnet_small by default), hybrid clean/PGD-10 training "
        "with the official loss, eval-mode attack, cosine schedule, label smoothing and drop path.",
        center_input=True,
        departures=NOFROST_DEPARTURES + NF_SMALL_DEPARTURES + (CENTER_DEPARTURE,),
        version=NF_VERSION,
    )
)
register_defense(
    HybridAT(
        name="nofrost-official",
        description="NoFrost exactly as the official PGDAT.py trains it (SGD + Nesterov, 90 epochs of "
        "256): for a GPU and --arch timm:nf_resnet50.",
        settings=OFFICIAL_SETTINGS,
        departures=OFFICIAL_DEPARTURES,
        version=NF_VERSION,
    )
)
register_defense(
    HybridAT(
        name="nofrost-agc",
        description="NoFrost with adaptive gradient clipping (clip factor 0.01, classifier exempt).",
        settings=replace(NOFROST_SETTINGS, agc=0.01),
        center_input=True,
        departures=NOFROST_DEPARTURES
        + NF_SMALL_DEPARTURES
        + (CENTER_DEPARTURE, "adaptive gradient clipping 0.01 (NFNets')"),
        version=NF_VERSION,
    )
)
register_defense(
    HybridAT(
        name="bn-at",
        description="BN-based AT control: the NoFrost hybrid recipe on a BN ResNet (SmallResNet by default).",
        normalizer_free=False,
        departures=NOFROST_DEPARTURES
        + ("network: robustkit's BN SmallResNet (width 8) instead of timm's BN ResNet-50",),
        version=NF_VERSION,
        published={"dataset": "ImageNet, ResNet-50", "clean": 0.5928, "pgd": 0.1357},
    )
)
