"""Video models: torchvision and pytorchvideo architectures behind one ``(B, C, T, H, W) -> (B, K)`` contract.

- ``video_model(name, num_classes)`` builds a registered architecture (``VIDEO_MODELS``) with
  normalization inside, optional local weights, and optional multi-clip averaging. Nothing is
  downloaded: weights come only from a local safetensors file or a ``weights_only`` state dict.
- ``PackPathways`` turns a multi-pathway network (SlowFast) into a single-input model: the slow
  pathway is a temporal subsample of the one clip inside ``forward``, so gradients of both pathways
  reach the one tensor an attacker controls.
- ``MultiClip`` averages logits over a fixed number of clips of a long input; an attack on the
  wrapped model differentiates through exactly the path the prediction takes.
- ``SmallVideoNet`` is the compact network of the ``shapes-video`` zoo entry.

Fixed-size average pools in the heads (pytorchvideo's, S3D's) are replaced by adaptive ones, so the
models accept any clip length and frame size their strides allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..registry import Registry
from .checkpoint import load_into
from .normalized import Normalized

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision video models
KINETICS_STD = (0.22803, 0.22145, 0.216989)
PYTORCHVIDEO_MEAN = (0.45, 0.45, 0.45)  # pytorchvideo model zoo
PYTORCHVIDEO_STD = (0.225, 0.225, 0.225)


class SmallVideoNet(nn.Module):
    """A spatio-temporal patch stem (3x4x4, stride 4 in space) and two factorized (2+1)D stages.

    Each stage is a spatial (1x3x3) then a temporal (3x1x1) convolution; the stem and the temporal
    convolutions give it the motion sensitivity that ``shapes-video`` needs. About 8 M
    multiply-adds per 8x32x32 clip: trains on a CPU in about a minute.
    """

    def __init__(self, num_classes: int = 8, width: int = 16, in_ch: int = 3) -> None:
        super().__init__()

        def unit(
            cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int], pad=None
        ) -> nn.Sequential:
            pad = tuple(k // 2 for k in kernel) if pad is None else pad
            return nn.Sequential(
                nn.Conv3d(cin, cout, kernel, stride, pad, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            )

        w = width
        self.stem = unit(in_ch, w, (3, 4, 4), (1, 4, 4), (1, 0, 0))
        self.layer1 = nn.Sequential(
            unit(w, 2 * w, (1, 3, 3), (1, 1, 1)), unit(2 * w, 2 * w, (3, 1, 1), (1, 1, 1))
        )
        self.layer2 = nn.Sequential(
            unit(2 * w, 4 * w, (1, 3, 3), (1, 2, 2)), unit(4 * w, 4 * w, (3, 1, 1), (2, 1, 1))
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


class PackPathways(nn.Module):
    """Build SlowFast's ``[slow, fast]`` input from one clip ``(B, C, T, H, W)`` inside ``forward``.

    The fast pathway sees all ``T`` frames; the slow one ``T // alpha`` frames spread evenly over
    the clip (pytorchvideo's ``PackPathway``). Both are views of the input, so the input gradient is
    the sum of both pathways' gradients.
    """

    def __init__(self, model: nn.Module, alpha: int = 4) -> None:
        super().__init__()
        if alpha < 1:
            raise ConfigError(f"SlowFast alpha must be >= 1, got {alpha}")
        self.model = model
        self.alpha = int(alpha)

    def pathways(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = x.shape[2]
        if t < self.alpha or t % self.alpha:
            raise InputError(f"SlowFast needs a clip length divisible by alpha={self.alpha}, got {t} frames")
        index = torch.linspace(0, t - 1, t // self.alpha, device=x.device).long()
        return [x.index_select(2, index), x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.pathways(x))


class MultiClip(nn.Module):
    """Average the logits of ``clips`` windows of ``clip_len`` frames taken from a longer input.

    Windows start at evenly spaced frames; with ``clip_len * clips == T`` they are consecutive and
    disjoint (the layout ``robustkit.data.video`` produces for multi-clip evaluation). All windows go
    through the wrapped model as one batch ``(B * clips, C, clip_len, H, W)``.
    """

    def __init__(self, model: nn.Module, clips: int, clip_len: int | None = None) -> None:
        super().__init__()
        if clips < 1:
            raise ConfigError(f"clips must be >= 1, got {clips}")
        self.model = model
        self.clips = int(clips)
        self.clip_len = clip_len

    def starts(self, total: int) -> list[int]:
        length = self.length(total)
        if self.clips == 1:
            return [(total - length) // 2]
        return [round(i * (total - length) / (self.clips - 1)) for i in range(self.clips)]

    def length(self, total: int) -> int:
        length = self.clip_len if self.clip_len is not None else total // self.clips
        if not 1 <= length <= total:
            raise InputError(
                f"cannot cut {self.clips} clips of {length} frames from an input of {total} frames"
            )
        return length

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B * clips, C, clip_len, H, W)``, clips of one sample adjacent."""
        t = x.shape[2]
        length = self.length(t)
        windows = torch.stack([x[:, :, s : s + length] for s in self.starts(t)], dim=1)
        return windows.flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.split(x))
        return logits.view(x.shape[0], self.clips, -1).mean(1)


def adaptive_pooling(model: nn.Module) -> nn.Module:
    """Replace the fixed-kernel ``AvgPool3d`` of classification heads by ``AdaptiveAvgPool3d(1)``.

    Applies to pytorchvideo's ResNet / X3D / SlowFast heads and torchvision's S3D; the pool has no
    parameters, so pretrained weights still load.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AvgPool3d) and _is_head_pool(module, name):
                setattr(module, name, nn.AdaptiveAvgPool3d(1))
            elif isinstance(child, nn.ModuleList) and type(module).__name__ == "PoolConcatPathway":
                for i, pool in enumerate(child):
                    if isinstance(pool, nn.AvgPool3d):
                        child[i] = nn.AdaptiveAvgPool3d(1)
    return model


def _is_head_pool(parent: nn.Module, name: str) -> bool:
    kind = type(parent).__name__
    return (kind in ("ResNetBasicHead", "ProjectedPool") and name == "pool") or (
        kind == "S3D" and name == "avgpool"
    )


VIDEO_MODELS: Registry[nn.Module] = Registry("video model")


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, **kwargs: Any) -> nn.Module:
        import torchvision.models.video as tv

        return adaptive_pooling(getattr(tv, arch)(weights=None, num_classes=num_classes, **kwargs))

    build.__doc__ = f"torchvision.models.video.{arch}, randomly initialized (no download)."
    return build


for _arch in (
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
    "s3d",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
):
    VIDEO_MODELS.register(_arch)(_torchvision(_arch))


# pytorchvideo's hub settings of X3D-XS / S / M / L: (clip length, crop, depth factor)
X3D_SETTINGS = {"xs": (4, 160, 2.2), "s": (13, 160, 2.2), "m": (16, 224, 2.2), "l": (16, 312, 5.0)}
# the input each pytorchvideo architecture is built for: (clip length, crop); Slow 8x8 and SlowFast 8x8
# (the fast pathway's 32 frames) as pytorchvideo's Kinetics-400 models are trained
PYTORCHVIDEO_INPUT = {
    **{f"x3d_{v}": (frames, crop) for v, (frames, crop, _) in X3D_SETTINGS.items()},
    "slow_r50": (8, 224),
    "slowfast_r50": (32, 224),
}


def _x3d(variant: str) -> Callable[..., nn.Module]:
    frames, crop, depth = X3D_SETTINGS[variant]

    def build(num_classes: int, **kwargs: Any) -> nn.Module:
        from pytorchvideo.models.x3d import create_x3d

        cfg = dict(
            input_clip_length=frames, input_crop_size=crop, depth_factor=depth, model_num_class=num_classes
        )
        cfg.update(head_activation=None)  # logits, not probabilities
        cfg.update(kwargs)
        return adaptive_pooling(create_x3d(**cfg))

    build.__doc__ = f"pytorchvideo X3D-{variant.upper()}, randomly initialized."
    return build


for _variant in ("xs", "s", "m", "l"):
    VIDEO_MODELS.register(f"x3d_{_variant}")(_x3d(_variant))


@VIDEO_MODELS.register("slow_r50")
def slow_r50(num_classes: int, **kwargs: Any) -> nn.Module:
    """pytorchvideo's Slow-only ResNet-50 (8x8 setting), randomly initialized."""
    from pytorchvideo.models.resnet import create_resnet

    cfg: dict[str, Any] = dict(model_num_class=num_classes, head_activation=None)
    cfg.update(kwargs)
    return adaptive_pooling(create_resnet(**cfg))


@VIDEO_MODELS.register("slowfast_r50")
def slowfast_r50(num_classes: int, alpha: int = 4, **kwargs: Any) -> nn.Module:
    """pytorchvideo's SlowFast ResNet-50 wrapped in :class:`PackPathways` (one clip in, logits out).

    ``alpha`` is the frame-rate ratio of the pathways; it sets the fusion stride too.
    """
    from pytorchvideo.models.slowfast import create_slowfast

    cfg: dict[str, Any] = dict(
        model_num_class=num_classes, head_activation=None, slowfast_fusion_conv_stride=(alpha, 1, 1)
    )
    cfg.update(kwargs)
    return PackPathways(adaptive_pooling(create_slowfast(**cfg)), alpha=alpha)


_PYTORCHVIDEO = ("x3d", "slow", "slowfast")


def video_model(
    name: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: bool = True,
    clips: int = 1,
    clip_len: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A video classifier mapping ``(B, C, T, H, W)`` in [0, 1] to logits ``(B, num_classes)``.

    ``weights``: a local ``.safetensors`` file or state dict for the bare architecture (loaded before
    wrapping). ``mean`` / ``std`` default to the statistics the architecture's family was trained
    with. ``clips > 1`` wraps the model in :class:`MultiClip`. Extra keywords go to the builder
    (e.g. ``stem_dim_outs`` for a narrow SlowFast).
    """
    model = VIDEO_MODELS.create(name, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_into(model.model if isinstance(model, PackPathways) else model, weights)
    if normalize:
        family = name.startswith(_PYTORCHVIDEO)
        mean = mean if mean is not None else (PYTORCHVIDEO_MEAN if family else KINETICS_MEAN)
        std = std if std is not None else (PYTORCHVIDEO_STD if family else KINETICS_STD)
        model = Normalized(model, mean, std)
    if clips > 1 or clip_len is not None:
        model = MultiClip(model, clips, clip_len)
    return model.eval()
