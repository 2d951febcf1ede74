"""robustkit's normalizer-free ResNet configs for timm: ``rk_nf_resnet_small``, timm's ``nf_resnet26``
config (``NfCfg``) scaled down for 32x32 images, built as timm's own ``NormFreeNet`` and registered with
timm's model registry (``register_timm_configs``), plus the per-image input centering option
(``CenterImage``). NoFrost (``defenses.nofrost``) trains these; ``backbones.build_backbone`` registers
them before it builds a ``timm:`` architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

NF_SMALL = "rk_nf_resnet_small"
NF_SMALL_DEPARTURES = (
    "network: rk_nf_resnet_small (timm NormFreeNet config) instead of nf_resnet50: depths (1, 1, 1, 1) "
    "instead of (3, 4, 6, 3); stage channels (32, 64, 128, 256) x width/8 instead of (256, 512, 1024, 2048) "
    "(bottleneck ratio 0.25 kept), stem 8 x width/8 channels instead of 64",
    "small-image stem: one 3x3 stride-1 scaled-WS conv, no max pool (timm's 7x7 stride-2 conv + pool would "
    "leave 8x8 maps of a 32x32 image); stages stride 1, 2, 2, 2 as in CIFAR ResNets",
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class CenterImage(nn.Module):
    """Subtract each image's per-channel spatial mean (per sample: deterministic, differentiable and
    independent of the rest of the batch, so the network stays normalizer-free in NoFrost's sense)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=(2, 3), keepdim=True)


def center_input(net: nn.Module) -> nn.Module:
    """Put ``CenterImage`` first in a timm ``NormFreeNet``'s stem (its weights keep their names)."""
    children = [("center", CenterImage()), *net.stem.named_children()]
    net.stem = nn.Sequential(OrderedDict(children))
    if hasattr(net, "stem_feat_idx"):  # timm >= 1.0.2x indexes the stem's feature module; older timm has none
        net.stem_feat_idx += 1
    return net


def nf_small_cfg() -> Any:
    """The ``rk_nf_resnet_small`` config: timm's ``nf_resnet26`` config (pre-activation bottlenecks, ReLU,
    alpha 0.2, ResNet-D shortcuts, scaled weight standardization) with depths and channels scaled down."""
    from timm.models.nfnet import model_cfgs

    return replace(
        model_cfgs["nf_resnet26"],
        depths=(1, 1, 1, 1),
        channels=(32, 64, 128, 256),
        stem_chs=8,
        stem_type="3x3_pool",  # stem stride 4 makes timm start stage 1 at stride 1; the stem is shrunk below
        ch_div=4,
    )


def nf_resnet_small(num_classes: int = 10, in_ch: int = 3, *, width: int = 8, **kwargs: Any) -> nn.Module:
    """timm's ``NormFreeNet`` with ``nf_small_cfg()`` for 32x32 images; channels scale with ``width / 8``.
    ``kwargs`` go to ``NormFreeNet`` (``drop_rate``, ``drop_path_rate``, config fields)."""
    from timm.models.nfnet import NormFreeNet

    net = NormFreeNet(
        nf_small_cfg(), num_classes=num_classes, in_chans=in_ch, width_factor=width / 8, **kwargs
    )
    # small-image stem: the 3x3 conv at stride 1 and no pooling (timm's padding of a 3x3 conv is 1 at
    # either stride), so stages see 32, 16, 8, 4 pixels of a 32x32 image
    net.stem.conv.stride = (1, 1)
    net.stem.pool = nn.Identity()
    for info in net.feature_info:
        info["reduction"] = max(1, info["reduction"] // 4)
    return net


def register_timm_configs() -> None:
    """Register robustkit's timm configs (``rk_nf_resnet_small``) with timm's model registry (once)."""
    from timm.models import is_model, register_model

    if is_model(NF_SMALL):
        return

    def rk_nf_resnet_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ConfigError(f"{NF_SMALL} has no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory extras
            kwargs.pop(key, None)
        return nf_resnet_small(kwargs.pop("num_classes", 1000), kwargs.pop("in_chans", 3), **kwargs)

    rk_nf_resnet_small.__module__ = __name__  # timm files the entry point under this module
    register_model(rk_nf_resnet_small)


def normalization_layers(net: nn.Module) -> list[str]:
    """Names of the normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm) in ``net``."""
    return [n for n, m in net.named_modules() if isinstance(m, _NORMS)]
