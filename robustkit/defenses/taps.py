"""Stage discovery for ResNet-style backbones: the stem, the four stages and the head, whatever the family.

``stages(net)`` returns a :class:`Stages` view of a network (2-D or 3-D) built by robustkit (``SmallResNet``,
``SmallResNet3d``), torchvision (``resnet*``, ``resnext*``, ``wide_resnet*``; video ``r3d_18``, ``mc3_18``,
``r2plus1d_18``), timm (``resnet*`` and relatives with ``conv1/bn1/act1/maxpool``) or pytorchvideo
(``create_resnet``: ``blocks[0]`` stem, ``blocks[1..4]`` stages, ``blocks[5]`` head). A ``Normalized``
wrapper is looked through: its mean and std become the view's input normalization, so every network
normalizes its [0, 1] input the way it was trained. Running ``stem``, the stages and ``head`` in order is
the network's own forward pass; ABNN hooks in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.normalized import Normalized

TAPS = ("stem", "layer1", "layer2", "layer3", "layer4")


class Head(nn.Module):
    """Global pool, flatten, classifier: the head of the torchvision and robustkit ResNets."""

    def __init__(self, pool: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.pool, self.fc = pool, fc

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(z).flatten(1))


@dataclass(frozen=True)
class Stages:
    """A view of a ResNet: ``stem`` (modules run in order), ``stages`` (four), ``head`` (last stage
    features to logits), and the input normalization (``mean``/``std`` per channel, None for none).

    The modules are the network's own (not copies); ``family`` names the layout that was recognized.
    """

    family: str
    stem: tuple[nn.Module, ...]
    stages: tuple[nn.Module, nn.Module, nn.Module, nn.Module]
    head: Callable[[torch.Tensor], torch.Tensor]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.to(x).view(shape)) / self.std.to(x).view(shape)

    def run_stem(self, z: torch.Tensor) -> torch.Tensor:
        for module in self.stem:
            z = module(z)
        return z

    def module(self, tap: str) -> nn.Module:
        """The module whose output is tap ``tap`` (``stem`` is the stem's last module)."""
        if tap not in TAPS:
            raise ConfigError(f"unknown tap {tap!r}; taps are {', '.join(TAPS)}")
        return self.stem[-1] if tap == "stem" else self.stages[TAPS.index(tap) - 1]

    def tap_norm(self, tap: str) -> nn.modules.batchnorm._BatchNorm:
        """The BatchNorm that sets tap ``tap``'s output channels: the last one outside any shortcut (the
        stem's last BN for ``stem``)."""
        scope = nn.Sequential(*self.stem) if tap == "stem" else self.module(tap)
        found = [
            m
            for n, m in scope.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _shortcut(n)
        ]
        if not found:
            raise ConfigError(f"{self.family}: tap {tap!r} has no BatchNorm layer")
        return found[-1]

    def channels(self, tap: str) -> int:
        return self.tap_norm(tap).num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own forward pass on [0, 1] input, through this view."""
        z = self.run_stem(self.normalize(x))
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


def _shortcut(name: str) -> bool:
    return any(word in name for word in ("shortcut", "downsample", "branch1"))


def _has(net: nn.Module, *names: str) -> bool:
    return all(hasattr(net, n) for n in names)


def stages(net: nn.Module) -> Stages:
    """The stem, four stages and head of ``net`` (see the module docstring for the families)."""
    mean = std = None
    inner = net
    if isinstance(net, Normalized):
        inner, mean, std = net.model, net.mean, net.std
    layers = ("layer1", "layer2", "layer3", "layer4")
    body = tuple(getattr(inner, n, None) for n in layers)
    if _has(inner, *layers, "fc"):
        if _has(inner, "stem", "pool"):  # robustkit SmallResNet / SmallResNet3d
            family, stem, head = "robustkit", (inner.stem,), Head(inner.pool, inner.fc)
        elif _has(inner, "stem", "avgpool"):  # torchvision VideoResNet (r3d_18, mc3_18, r2plus1d_18)
            family, stem, head = "torchvision-video", (inner.stem,), Head(inner.avgpool, inner.fc)
        elif _has(inner, "conv1", "bn1", "relu", "maxpool", "avgpool"):  # torchvision ResNet
            family = "torchvision"
            stem = (inner.conv1, inner.bn1, inner.relu, inner.maxpool)
            head = Head(inner.avgpool, inner.fc)
        elif _has(inner, "conv1", "bn1", "act1", "maxpool", "global_pool", "forward_head"):  # timm ResNet
            family = "timm"
            stem = (inner.conv1, inner.bn1, inner.act1, inner.maxpool)
            head = inner.forward_head
        else:
            raise _missing(inner, "stem/pool (robustkit), stem/avgpool (torchvision video), "
                                  "conv1/bn1/relu/maxpool/avgpool (torchvision) or "
                                  "conv1/bn1/act1/maxpool/global_pool (timm)")  # fmt: skip
        return Stages(family, stem, body, head, mean, std)  # type: ignore[arg-type]
    blocks = getattr(inner, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) == 6:  # pytorchvideo create_resnet
        kinds = [type(b).__name__ for b in blocks]
        if kinds[1:5] == ["ResStage"] * 4 and "Stem" in kinds[0] and "Head" in kinds[5]:
            return Stages("pytorchvideo", (blocks[0],), tuple(blocks[1:5]), blocks[5], mean, std)  # type: ignore[arg-type]
    raise _missing(inner, "layer1..layer4 and fc, or pytorchvideo's blocks (stem, 4 ResStage, head)")


def _missing(net: nn.Module, expected: str) -> ConfigError:
    names = [n for n, _ in net.named_children()]
    return ConfigError(
        f"{type(net).__name__} is not a ResNet-style network robustkit can split into stem, four stages and "
        f"head: expected {expected}; it has children {names}"
    )
