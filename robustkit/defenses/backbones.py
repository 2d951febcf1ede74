"""Backbones the defense recipes build on: the zoo's ``SmallResNet`` for images and its 3-D twin
``SmallResNet3d`` for video, both behind one fixed input normalization.

Both expose ``stem``, ``layer1``..``layer4``, a global ``pool`` and ``fc``, the five taps ABNN uses.
"""

from __future__ import annotations

from torch import nn

from ..models.normalized import Normalized
from ..models.resnet import SmallResNet, SmallResNet3d
from ..training.data import DataSpec
from ..training.seeding import fixed_seed

__all__ = ["MEAN", "STD", "DataSpec", "SmallResNet3d", "bn_backbone", "bn_resnet", "normalized"]

# One fixed affine preprocessing for every dataset (inputs are in [0, 1]), so a checkpoint plus a
# recipe name is enough to rebuild a model: nothing dataset-specific hides in non-persistent buffers.
MEAN = 0.5
STD = 0.25


def normalized(model: nn.Module, channels: int) -> Normalized:
    return Normalized(model, [MEAN] * channels, [STD] * channels)


def bn_backbone(spec: DataSpec, width: int = 8, seed: int = 0) -> nn.Module:
    """An unnormalized BN ResNet for the spec (2-D or 3-D), with deterministic initial weights."""
    with fixed_seed(seed):
        if spec.video:
            return SmallResNet3d(spec.num_classes, width=width, in_ch=spec.channels)
        return SmallResNet(num_classes=spec.num_classes, width=width, in_ch=spec.channels)


def bn_resnet(spec: DataSpec, width: int = 8, seed: int = 0) -> Normalized:
    """``bn_backbone`` with the fixed input normalization inside: maps [0, 1] input to logits."""
    return normalized(bn_backbone(spec, width, seed), spec.channels)
