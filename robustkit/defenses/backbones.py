"""Backbones the defense recipes build on: by default the zoo's ``SmallResNet`` for images and its 3-D
twin ``SmallResNet3d`` for video; with an architecture spec (``TrainSettings.arch``, ``build_backbone``)
any torchvision, timm or video architecture, or a user's ``package.module:function``. Every backbone sits
behind one fixed input normalization (``normalized``).

The SmallResNets expose ``stem``, ``layer1``..``layer4``, a global ``pool`` and ``fc``, the five taps ABNN
uses.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models.normalized import Normalized
from ..models.resnet import SmallResNet, SmallResNet3d
from ..training.data import DataSpec
from ..training.seeding import fixed_seed

__all__ = [
    "MEAN",
    "STD",
    "DataSpec",
    "SmallResNet3d",
    "bn_backbone",
    "bn_resnet",
    "build_backbone",
    "normalized",
]

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


def build_backbone(
    spec: DataSpec, arch: str | None = None, *, width: int = 8, seed: int = 0, drop_path: float = 0.0
) -> nn.Module:
    """An unnormalized, randomly initialized (``seed``) network for ``spec`` with ``spec.num_classes``
    outputs. ``arch``: None or ``"small-resnet"`` (``bn_backbone``, ``width``), ``"torchvision:NAME"``,
    ``"timm:NAME"`` (``drop_path`` as its stochastic depth rate), ``"video:NAME"`` (a torchvision or
    pytorchvideo video architecture, ``robustkit.models.video``), or ``"package.module:function"`` called
    with ``num_classes=`` and ``in_ch=``. Nothing is downloaded."""
    if arch is None or arch == "small-resnet":
        return bn_backbone(spec, width, seed)
    scheme, sep, name = arch.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"architecture '{arch}': expected small-resnet, torchvision:NAME, timm:NAME, video:NAME or "
            "package.module:function"
        )
    with fixed_seed(seed):
        net = _build(spec, scheme, name, arch, drop_path)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"architecture '{arch}' built a {type(net).__name__}, not an nn.Module")
    return net


def _build(spec: DataSpec, scheme: str, name: str, arch: str, drop_path: float) -> Any:
    if scheme == "video":
        from ..models.video import VIDEO_MODELS

        if not spec.video:
            raise ConfigError(f"architecture '{arch}' is a video network; dataset '{spec.name}' holds images")
        if name not in VIDEO_MODELS:
            raise ConfigError(
                f"architecture '{arch}': no video architecture '{name}' ({', '.join(VIDEO_MODELS.names())})"
            )
        return VIDEO_MODELS.create(name, num_classes=spec.num_classes)
    if scheme in ("torchvision", "timm") and spec.video:
        raise ConfigError(
            f"architecture '{arch}' is an image network; dataset '{spec.name}' holds video clips"
        )
    if scheme == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise ConfigError(f"architecture '{arch}': torchvision has no image classifier '{name}'")
        if spec.channels != 3:
            raise ConfigError(
                f"architecture '{arch}' takes 3 input channels; dataset '{spec.name}' has {spec.channels}"
            )
        return torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes)
    if scheme == "timm":
        import timm

        from .nf_resnets import register_timm_configs

        register_timm_configs()  # robustkit's own timm configs (rk_nf_resnet_small)

        if not timm.is_model(name):
            raise ConfigError(f"architecture '{arch}': timm has no architecture '{name}'")
        extra = {"drop_path_rate": drop_path} if drop_path else {}
        return timm.create_model(
            name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.channels, **extra
        )
    from ..models.loading import _import_object

    factory = _import_object(arch, "architecture")
    return factory(num_classes=spec.num_classes, in_ch=spec.channels)
