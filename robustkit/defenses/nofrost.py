"""NoFrost (Wang et al. 2022, "Removing Batch Normalization Boosts Adversarial Training").

A normalizer-free ResNet built from timm's NF-ResNet components (``ScaledStdConv2d`` scaled weight
standardization, ``NormFreeBlock`` pre-activation residual blocks with alpha / beta scaling, ResNet-D
average-pool transition shortcuts), in a small-image variant for 32x32 input (3x3 stride-1 stem, no
pooling stem, per-image input centering; see ``NFResNet`` for why the branches are not zero-initialized
and the input is centered at this training budget). Training: ``0.5 * CE(clean) +
0.5 * CE(adversarial)`` with PGD-10 L-inf, eps 8/255, step 1/255, random start; adaptive gradient clipping optional (``nofrost-agc``). The same
recipe on a BN ResNet is the BN-based AT control (``bn-at``): there BN statistics are estimated on the
clean/adversarial mixture, the effect NoFrost removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..training.data import DataSpec
from ..training.seeding import fixed_seed
from ..training.settings import StepContext, TrainSettings
from .adversarial import pgd_examples
from .backbones import bn_resnet, normalized
from .base import DefenseRecipe, register_defense


class NFResNet(nn.Module):
    """Normalizer-free ResNet for small images: stem, four stages of ``NormFreeBlock`` and a linear head.

    Within a stage the expected variance of the residual stream grows by ``alpha**2`` per block and each
    block's branch input is scaled by ``beta = 1 / expected_std`` (reset at each stage's transition
    block, whose shortcut re-standardizes), exactly as timm's ``NormFreeNet`` does; transition shortcuts
    are timm's ResNet-D ones (2x2 average pool, then a 1x1 scaled-WS conv).

    Defaults are the configuration that trains in robustkit's reduced budget (a few hundred steps);
    ``alpha=0.2, zero_init_last=True, center_input=False`` is timm's / the paper's ImageNet setting.

    - ``center_input``: subtract each image's per-channel spatial mean before the stem (per sample,
      deterministic and differentiable, so NoFrost stays batch-independent). Without a normalizer the
      stem output is dominated by the image's mean colour (on ``shapes`` a random background colour,
      ~60% of the stem's activation variance), which after the ReLUs gates the shape features at random per
      image; this alone kept both our network and timm's ``NormFreeNet`` at chance (loss 2.30) for
      300 Adam steps, while a BN or InstanceNorm ResNet reached 99%.
    - ``zero_init_last``: start every residual branch's last conv at gain 0 (SkipInit-style). With one
      block per stage the network is then a chain of 1x1 shortcut convs at init and the branches take
      most of a short budget to switch on (67% vs 92% clean accuracy after 300 steps on shapes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 8,
        depths: tuple[int, ...] = (1, 1, 1, 1),
        alpha: float = 1.0,
        in_ch: int = 3,
        bottle_ratio: float = 1.0,
        act: str = "relu",
        zero_init_last: bool = False,
        center_input: bool = True,
    ) -> None:
        # timm (and torchvision under it) load when a network is built, not when the defense registers
        from timm.layers import ScaledStdConv2d
        from timm.models.nfnet import NormFreeBlock, _nonlin_gamma

        super().__init__()
        self.center_input = center_input
        gamma = _nonlin_gamma[act]
        act_layer = partial(nn.ReLU) if act == "relu" else partial(nn.SiLU)
        conv = partial(ScaledStdConv2d, gamma=gamma, eps=1e-5)
        # The stem sees normalized pixels, not a ReLU output: no nonlinearity gain there.
        self.stem = ScaledStdConv2d(in_ch, width, 3, stride=1, eps=1e-5)
        chans = [width, width * 2, width * 4, width * 8]
        stages, prev, self.expected_var = [], width, []
        for i, (c, depth) in enumerate(zip(chans, depths, strict=True)):
            blocks, expected_var = [], 1.0
            for j in range(depth):
                stride = (1 if i == 0 else 2) if j == 0 else 1
                block = NormFreeBlock(
                    in_chs=prev,
                    out_chs=c,
                    stride=stride,
                    alpha=alpha,
                    beta=1.0 / expected_var**0.5,
                    bottle_ratio=bottle_ratio,
                    ch_div=1,
                    reg=False,
                    act_layer=act_layer,
                    conv_layer=conv,
                )
                if not zero_init_last:
                    nn.init.ones_(block.conv3.gain)
                blocks.append(block)
                if j == 0:
                    expected_var = 1.0
                expected_var += alpha**2
                self.expected_var.append(expected_var)
                prev = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.act = act_layer()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center_input:
            x = x - x.mean(dim=(2, 3), keepdim=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(self.act(x)).flatten(1))


def build_nf(spec: DataSpec, settings: TrainSettings) -> nn.Module:
    if spec.video:
        raise ConfigError(f"NoFrost's NF-ResNet is 2-D; dataset '{spec.name}' holds video clips")
    with fixed_seed(0):
        net = NFResNet(spec.num_classes, width=settings.width, in_ch=spec.channels)
    return normalized(net, spec.channels)


def hybrid_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """0.5 * CE(clean) + 0.5 * CE(adversarial), one forward pass over the concatenated batch (so a BN
    network estimates its statistics on the clean/adversarial mixture)."""
    eps, step_size = ctx.budget()
    x_adv = pgd_examples(
        model, x, y, eps=eps, steps=ctx.settings.steps, step_size=step_size, generator=ctx.generator
    )
    logits = model(torch.cat([x, x_adv]))
    n = x.shape[0]
    return 0.5 * F.cross_entropy(logits[:n], y) + 0.5 * F.cross_entropy(logits[n:], y)


# Bumped whenever NFResNet's architecture or initialization changes (part of the weights cache key).
# 2: input centering, ResNet-D shortcuts, alpha 1, branches not zero-initialized (v1 stayed at chance).
NF_VERSION = "2"
NOFROST_PAPER = "Wang et al. 2022, Removing Batch Normalization Boosts Adversarial Training (ICML)"
NOFROST_SETTINGS = TrainSettings(epochs=4, eps=8 / 255, steps=10, step_size=1 / 255, eps_warmup=0.4)
NOFROST_PUBLISHED = {
    "dataset": "ImageNet, ResNet-50",
    "clean": 0.7406,
    "pgd": 0.2356,
    "standard": {"clean": 0.7606},
    "bn-at": {"clean": 0.5928, "pgd": 0.1357},
}


@dataclass(frozen=True, kw_only=True)
class HybridAT(DefenseRecipe):
    """The NoFrost recipe: hybrid clean/adversarial training (``hybrid_loss``) of an NF-ResNet, or of a BN
    ResNet with ``normalizer_free=False`` (the BN-based AT control)."""

    normalizer_free: bool = True
    settings: TrainSettings = NOFROST_SETTINGS
    paper: str = NOFROST_PAPER
    published: dict[str, Any] = field(default_factory=lambda: dict(NOFROST_PUBLISHED))

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return build_nf(spec, settings) if self.normalizer_free else bn_resnet(spec, settings.width)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return hybrid_loss(model, x, y, ctx)


register_defense(
    HybridAT(
        name="nofrost",
        description="NoFrost: NF-ResNet (timm components, 32x32 variant), hybrid clean/PGD-10 training.",
        version=NF_VERSION,
    )
)
register_defense(
    HybridAT(
        name="nofrost-agc",
        description="NoFrost with adaptive gradient clipping (clip factor 0.01, classifier exempt).",
        settings=replace(NOFROST_SETTINGS, agc=0.01),
        version=NF_VERSION,
    )
)
register_defense(
    HybridAT(
        name="bn-at",
        description="BN-based AT control: the NoFrost hybrid recipe on a BN ResNet.",
        normalizer_free=False,
        published={"dataset": "ImageNet, ResNet-50", "clean": 0.5928, "pgd": 0.1357},
    )
)
