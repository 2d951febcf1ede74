"""Backbones the defense recipes build on: the zoo's ``SmallResNet`` for images and a 3-D twin for video.

Both expose ``stem``, ``layer1``..``layer4``, a global ``pool`` and ``fc``, the five taps ABNN uses.
``DataSpec`` describes what a dataset looks like to a model (classes, channels, spatial shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.normalized import Normalized
from ..models.resnet import SmallResNet

# One fixed affine preprocessing for every dataset (inputs are in [0, 1]), so a checkpoint plus a
# recipe name is enough to rebuild a model: nothing dataset-specific hides in non-persistent buffers.
MEAN = 0.5
STD = 0.25


@dataclass(frozen=True)
class DataSpec:
    """What a dataset looks like to a model: ``shape`` is (C, H, W) for images, (C, T, H, W) for video."""

    name: str
    num_classes: int
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def video(self) -> bool:
        return len(self.shape) == 4

    def as_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(str(d["name"]), int(d["num_classes"]), tuple(int(s) for s in d["shape"]))


def normalized(model: nn.Module, channels: int) -> Normalized:
    return Normalized(model, [MEAN] * channels, [STD] * channels)


class BasicBlock3d(nn.Module):
    """The 3-D version of ``SmallResNet``'s basic block (spatial stride only; time is kept)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        s = (1, stride, stride)
        self.conv1 = nn.Conv3d(cin, cout, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, s, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet3d(nn.Module):
    """Stem + four stages of 3-D basic blocks for short clips (B, C, T, H, W)."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_ch: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True)
        )
        chans = [width, width * 2, width * 4, width * 8]
        self.layer1 = BasicBlock3d(width, chans[0], 1)
        self.layer2 = BasicBlock3d(chans[0], chans[1], 2)
        self.layer3 = BasicBlock3d(chans[1], chans[2], 2)
        self.layer4 = BasicBlock3d(chans[2], chans[3], 2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(chans[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def bn_backbone(spec: DataSpec, width: int = 8, seed: int = 0) -> nn.Module:
    """An unnormalized BN ResNet for the spec (2-D or 3-D), with deterministic initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.video:
            return SmallResNet3d(spec.num_classes, width=width, in_ch=spec.channels)
        return SmallResNet(num_classes=spec.num_classes, width=width, in_ch=spec.channels)


def bn_resnet(spec: DataSpec, width: int = 8, seed: int = 0) -> Normalized:
    """``bn_backbone`` with the fixed input normalization inside: maps [0, 1] input to logits."""
    return normalized(bn_backbone(spec, width, seed), spec.channels)
