"""ABNN, adaptive batch-normalization networks (Lo & Patel 2024), for any ResNet-style backbone.

A frozen substitute S, pre-trained on other or larger data, sees the input x with the target T. At each tap
(the stem's output and the outputs of stages 1..3 by default; ``taps.stages`` finds them in robustkit's,
torchvision's, timm's and pytorchvideo's ResNets, 2-D and 3-D) an adaptive BN layer normalizes the
target's feature with its own BatchNorm statistics and re-colours it with the substitute's::

    z'_t = gamma * (sigma_s * (z_t - mu_t) / sigma_t + mu_s) + beta

- ``mu_t``, ``sigma_t``: the target's BatchNorm statistics at the tap: batch statistics in training and
  the running statistics at test, as in the authors' prototype (``stats='running'``, the default: a
  sample's output does not depend on its batch mates). ``stats='batch'`` uses the current batch's
  statistics at test too, and pools the substitute's statistics over the batch as the prototype does
  (the defense is then batch-dependent).
- ``mu_s``, ``sigma_s``: the substitute's feature statistics at the same tap, pooled over the batch in
  training (so the target cannot learn to read one sample's class from them), per sample at test (pooled
  over the test batch with ``stats='batch'``): one scalar each (``granularity='global'``, the prototype's form) or one
  per channel (``'channel'``, the literal reading of the equation; needs equal channel counts).
- ``gamma``, ``beta``: the substitute's own BN affine parameters at the tap (``affine='substitute'``,
  literal; equal channel counts) or a learned map from the substitute's statistics at the tap
  (``affine='map'``, the prototype's generator; initialized to gamma = 1, beta = 0).

No tap after the last stage: the target's last stage, pool and classifier read only the target's own
features, so the substitute re-colours the target but cannot decide its prediction
(``ABNN.forward(x, substitute_input=other)`` shows it; the prototype's fifth tap after layer4 lets a
learned map carry the substitute's penultimate features straight to the classifier). T trains on clean
data with cross-entropy; S stays frozen.

Evaluation views: white-box through both networks (``abnn``), gradients through the target only
(``abnn-target-only``), transfer from the substitute (``abnn-transfer``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..builtin.mixture import columns
from ..builtin.zoo import ZOO, load_zoo_model
from ..errors import ConfigError
from ..models.normalized import Normalized
from ..training.data import DataSpec
from ..training.seeding import fixed_seed
from ..training.settings import TrainSettings
from .adaptive import Transfer
from .backbones import build_backbone, normalized
from .base import Capabilities, Context, DefenseRecipe, register_defense
from .taps import TAPS, Stages, stages

log = logging.getLogger(__name__)

DEFAULT_TAPS = ("stem", "layer1", "layer2", "layer3")
GRANULARITY = ("global", "channel")
AFFINE = ("map", "substitute")
STATS = ("running", "batch")
IMAGE_SUBSTITUTE = "zoo:mixture-resnet"
VIDEO_SUBSTITUTE = "zoo:mixture-video-r3d"


# ----------------------------------------------------------------------------- functional core
def moments(
    z: torch.Tensor, granularity: str, reduce: str, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation sqrt(var + eps) (biased variance, as BatchNorm), kept broadcastable.

    ``granularity``: 'channel' (one value per channel) or 'global' (one over all channels);
    ``reduce``: 'batch' (pool over the batch too) or 'sample' (one value per sample).
    """
    if granularity not in GRANULARITY or reduce not in ("batch", "sample"):
        raise ConfigError(
            f"moments: granularity must be global/channel and reduce batch/sample, got {granularity}/{reduce}"
        )
    keep = {0} if reduce == "sample" else set()
    if granularity == "channel":
        keep.add(1)
    dims = tuple(d for d in range(z.ndim) if d not in keep)
    var, mean = torch.var_mean(z, dim=dims, keepdim=True, correction=0)
    return mean, torch.sqrt(var + eps)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"ABNN {what} must be one of {', '.join(allowed)}, got {value!r}")


# ----------------------------------------------------------------------------- layers
class AdaptiveBN(nn.Module):
    """One adaptive BN layer: the target's BatchNorm normalization (own running statistics, no affine),
    re-coloured with the substitute's statistics and gamma/beta (see the module docstring)."""

    def __init__(
        self,
        channels_t: int,
        channels_s: int,
        *,
        granularity: str = "global",
        affine: str = "map",
        stats: str = "running",
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        _check(granularity, GRANULARITY, "granularity")
        _check(affine, AFFINE, "affine")
        _check(stats, STATS, "stats")
        if (granularity == "channel" or affine == "substitute") and channels_t != channels_s:
            raise ConfigError(
                f"ABNN granularity={granularity!r}, affine={affine!r} needs equal channel counts at every tap; "
                f"got target {channels_t} vs substitute {channels_s}. Use granularity='global', affine='map', "
                "or a target as wide as the substitute."
            )
        self.granularity, self.affine, self.stats = granularity, affine, stats
        self.eps, self.momentum, self.channels_t = eps, momentum, channels_t
        self.register_buffer("running_mean", torch.zeros(channels_t))
        self.register_buffer("running_var", torch.ones(channels_t))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.map: nn.Linear | None = None
        if affine == "map":  # input: the substitute's mean and std at the tap (global: 2 numbers)
            self.map = nn.Linear(2 if granularity == "global" else 2 * channels_s, 2 * channels_t)
            with torch.no_grad():
                self.map.weight.zero_()
                self.map.bias.copy_(torch.cat([torch.ones(channels_t), torch.zeros(channels_t)]))

    def normalize(self, z_t: torch.Tensor) -> torch.Tensor:
        """``(z_t - mu_t) / sigma_t`` with BatchNorm semantics (batch statistics while training, running
        statistics at test unless ``stats='batch'``)."""
        if self.training:
            self.num_batches_tracked.add_(1)
            return F.batch_norm(
                z_t, self.running_mean, self.running_var, None, None, True, self.momentum, self.eps
            )
        if self.stats == "batch":
            return F.batch_norm(z_t, None, None, None, None, True, 0.0, self.eps)
        return F.batch_norm(z_t, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)

    def forward(
        self,
        z_t: torch.Tensor,
        z_s: torch.Tensor,
        gamma_s: torch.Tensor | None = None,
        beta_s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if z_t.ndim != z_s.ndim or (self.stats == "running" and z_t.shape[0] != z_s.shape[0]):
            raise ConfigError(
                f"adaptive BN: target {tuple(z_t.shape)} and substitute {tuple(z_s.shape)} features differ "
                "in rank or batch"
            )
        pooled = self.training or self.stats == "batch"  # per sample only at test with running statistics
        mu_s, sd_s = moments(z_s, self.granularity, "batch" if pooled else "sample", self.eps)
        bshape = (-1, self.channels_t) + (1,) * (z_t.ndim - 2)
        if self.map is not None:
            gamma, beta = self.map(torch.cat([mu_s.flatten(1), sd_s.flatten(1)], 1)).split(self.channels_t, 1)
        elif gamma_s is None or beta_s is None:
            raise ConfigError("ABNN affine='substitute' needs the substitute's BN weight and bias")
        else:
            gamma, beta = gamma_s, beta_s
        g, b = gamma.reshape(bshape), beta.reshape(bshape)
        return g * (sd_s * self.normalize(z_t) + mu_s) + b

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, affine={self.affine}, stats={self.stats}"


class ABNN(nn.Module):
    """The target with adaptive BN at ``taps``, fed by the frozen ``substitute``.

    ``target`` and ``substitute`` are ResNet-style networks (``taps.stages``), each normally behind its own
    ``Normalized`` input normalization; input is in [0, 1]. ``forward(x, substitute_input=x2)`` feeds the
    substitute another input (a probe of how much the substitute decides); ``detach_substitute=True`` cuts
    the gradient through the substitute path (the target-only-gradient view).
    """

    def __init__(
        self,
        target: nn.Module,
        substitute: nn.Module,
        *,
        taps: tuple[str, ...] | list[str] = DEFAULT_TAPS,
        granularity: str = "global",
        affine: str = "map",
        stats: str = "running",
    ) -> None:
        super().__init__()
        self.target = target
        self.substitute = substitute
        self.substitute.requires_grad_(False)
        self.substitute.eval()
        t, s = stages(target), stages(substitute)
        bad = [tap for tap in taps if tap not in TAPS]
        if bad or not taps or len(set(taps)) != len(taps):
            raise ConfigError(f"ABNN taps must be distinct names among {', '.join(TAPS)}, got {list(taps)}")
        self.taps = tuple(tap for tap in TAPS if tap in taps)
        self.abn = nn.ModuleDict(
            {
                tap: AdaptiveBN(
                    t.channels(tap), s.channels(tap), granularity=granularity, affine=affine, stats=stats
                )
                for tap in self.taps
            }
        )
        self._views: tuple[Stages, Stages] | None = (t, s)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> ABNN:
        self._views = None  # the views hold the Normalized wrappers' buffers, which a move replaces
        return super()._apply(fn, *args, **kwargs)

    def _stages(self) -> tuple[Stages, Stages]:
        """(target, substitute) stage views, found once (not in every forward pass of an attack)."""
        if self._views is None:
            self._views = (stages(self.target), stages(self.substitute))
        return self._views

    def train(self, mode: bool = True) -> ABNN:
        super().train(mode)
        self.substitute.eval()  # frozen: its BN running statistics never move
        return self

    @property
    def stats(self) -> str:
        return next(iter(self.abn.values())).stats

    @property
    def batch_dependent(self) -> bool:
        return self.stats == "batch"

    def target_stages(self) -> Stages:
        return self._stages()[0]

    def substitute_stages(self) -> Stages:
        return self._stages()[1]

    def substitute_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The substitute's features at the taps, on [0, 1] input (its later stages are not run)."""
        s = self.substitute_stages()
        z = s.run_stem(s.normalize(x))
        feats = {"stem": z}
        last = TAPS.index(self.taps[-1])
        for i, stage in enumerate(s.stages[:last], start=1):
            z = stage(z)
            feats[TAPS[i]] = z
        return {tap: feats[tap] for tap in self.taps}

    def forward(
        self, x: torch.Tensor, substitute_input: torch.Tensor | None = None, detach_substitute: bool = False
    ) -> torch.Tensor:
        feats = self.substitute_features(x if substitute_input is None else substitute_input)
        if detach_substitute:
            feats = {k: v.detach() for k, v in feats.items()}
        t, s = self._stages()
        z = t.run_stem(t.normalize(x))
        for name, stage in zip(TAPS, (None, *t.stages), strict=True):
            if stage is not None:
                z = stage(z)
            if name in self.abn:
                layer = self.abn[name]
                bn = s.tap_norm(name) if layer.affine == "substitute" else None
                z = layer(z, feats[name], None if bn is None else bn.weight, None if bn is None else bn.bias)
        return t.head(z)


class TargetOnly(nn.Module):
    """ABNN with the substitute path detached: gradients reach the input only through the target."""

    def __init__(self, abnn: ABNN) -> None:
        super().__init__()
        self.abnn = abnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.abnn(x, detach_substitute=True)


class Columns(nn.Module):
    """``model``'s logits restricted to ``index`` (a substitute's union of labels, seen from one dataset)."""

    def __init__(self, model: nn.Module, index: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.index)


# ----------------------------------------------------------------------------- substitutes
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def architecture_normalization(arch: str, net: nn.Module, channels: int) -> tuple[tuple, tuple]:
    """The input mean/std an architecture family is trained with: ImageNet's for torchvision, the model's
    own config for timm, Kinetics' / pytorchvideo's for video networks, robustkit's (0.5, 0.25) else."""
    from ..models.video import KINETICS_MEAN, KINETICS_STD, PYTORCHVIDEO_MEAN, PYTORCHVIDEO_STD

    scheme, _, name = arch.partition(":")
    if scheme == "torchvision":
        return IMAGENET
    if scheme == "timm":
        cfg = getattr(net, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))
    if scheme == "video":
        family = name.startswith(("x3d", "slow"))
        return (PYTORCHVIDEO_MEAN, PYTORCHVIDEO_STD) if family else (KINETICS_MEAN, KINETICS_STD)
    return (0.5,) * channels, (0.25,) * channels


def substitute_network(
    spec: DataSpec, substitute: str | None = None, classes: int | None = None
) -> nn.Module:
    """The (untrained) substitute: ``zoo:NAME`` (a zoo model; default the built-in mixture substitute for
    images or video) or an architecture spec (``torchvision:NAME``, ``timm:NAME``, ``video:NAME``,
    ``package.module:function``) with ``classes`` outputs behind its family's input normalization."""
    name = substitute or (VIDEO_SUBSTITUTE if spec.video else IMAGE_SUBSTITUTE)
    if name.startswith("zoo:"):
        if name[4:] not in ZOO:
            raise ConfigError(
                f"ABNN substitute '{name}': no zoo model '{name[4:]}' ({', '.join(ZOO.names())})"
            )
        return ZOO.create(name[4:]).build()
    net = build_backbone(DataSpec(spec.name, classes or spec.num_classes, spec.shape), name, seed=1)
    mean, std = architecture_normalization(name, net, spec.channels)
    return Normalized(net, mean, std)


def build_abnn(
    spec: DataSpec,
    settings: TrainSettings,
    *,
    width: int | None = None,
    substitute: str | None = None,
    substitute_classes: int | None = None,
    **options: Any,
) -> ABNN:
    """ABNN with target ``settings.arch`` (width ``width`` or ``settings.width`` for robustkit's ResNets;
    as wide as the substitute when the options need equal channel counts) behind robustkit's fixed input
    normalization, and the substitute ``substitute_network(spec, substitute, substitute_classes)``."""
    sub = substitute_network(spec, substitute, substitute_classes)
    small = settings.arch in (None, "small-resnet")
    literal = options.get("granularity") == "channel" or options.get("affine") == "substitute"
    w = width or settings.width
    if small and literal and width is None:
        w = stages(sub).channels("stem")  # robustkit ResNets double the width per stage, as the substitute
    target = normalized(
        build_backbone(spec, settings.arch, width=w, drop_path=settings.drop_path), spec.channels
    )
    with fixed_seed(0):  # the maps' random init is overwritten; draw it from a fork, not the caller's RNG
        return ABNN(target, sub, **options)


# ----------------------------------------------------------------------------- recipes
ABNN_PAPER = "Lo & Patel 2024, Adaptive Batch Normalization Networks for Adversarial Robustness"
ABNN_PUBLISHED = {
    "dataset": "CIFAR-10",
    "clean": 0.875,
    "pgd": 0.315,
    "training_cost_passes": 3,
    "standard": {"clean": 0.934, "pgd": 0.0, "training_cost_passes": 2},
    "pgd-at": {"clean": 0.833, "pgd": 0.516, "training_cost_passes": 12},
}


ABNN_DEPARTURES = (
    "taps: adaptive BN after the stem and stages 1-3, none after the last stage (the prototype also "
    "re-colours layer4's output; there the learned map handed the substitute's penultimate features to the "
    "classifier, and the prediction followed the substitute's image)",
    "substitute: trained on a mixture of the built-in data (images: shapes + signs + faces, 30 classes; "
    "video: shapes-video + still face clips, 18 classes) instead of ImageNet / Kinetics",
    "scale: 4 epochs of the built-in 32x32 images (or 8-frame clips) with Adam instead of CIFAR-10 / UCF-101",
)


@dataclass(frozen=True, kw_only=True)
class ABNNRecipe(DefenseRecipe):
    """ABNN: the target ``settings.arch`` with adaptive BN fed by the frozen, pre-trained ``substitute``
    (None: the built-in mixture substitute, ``zoo:mixture-resnet`` / ``zoo:mixture-video-r3d``; or an
    architecture spec whose weights come from ``--init``, with ``substitute_classes`` outputs).
    ``options`` go to ``ABNN`` (taps, granularity, affine, stats). Trained on clean data with
    cross-entropy; the substitute's passes count on their own in the cost."""

    width: int | None = None
    substitute: str | None = None
    substitute_classes: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    departures: tuple[str, ...] = ABNN_DEPARTURES
    paper: str = ABNN_PAPER
    version: str = "2"
    published: dict[str, Any] = field(default_factory=lambda: dict(ABNN_PUBLISHED))

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return build_abnn(
            spec, settings, width=self.width, substitute=self.substitute,
            substitute_classes=self.substitute_classes, **self.options,
        )  # fmt: skip

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        assert isinstance(model, ABNN)
        return [p for n, p in model.named_parameters() if not n.startswith("substitute.")]

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        """Load the pre-trained substitute: a user's weights (``--init``), else the zoo model."""
        from .loading import load_weights

        assert isinstance(model, ABNN)
        name = self.substitute or (VIDEO_SUBSTITUTE if ctx.spec.video else IMAGE_SUBSTITUTE)
        if ctx.init is not None:
            load_weights(model.substitute, ctx.init)
            source = str(ctx.init)
        elif name.startswith("zoo:"):
            # trained on first use on the training device (a GPU trains the zoo substitute in seconds)
            trained = load_zoo_model(name[4:], device=ctx.device, progress=ctx.progress)
            model.substitute.load_state_dict(trained.state_dict())
            source = name
        else:
            raise ConfigError(
                f"ABNN substitute '{name}' needs its pre-trained weights: pass them with --init PATH (init=)"
            )
        model.substitute.requires_grad_(False)
        log.info("ABNN substitute weights from %s", source)
        return {
            "departures": list(self.departures),
            "substitute": source,
            "substitute_arch": name,
            "taps": {k: v.extra_repr() for k, v in model.abn.items()},
        }

    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        """The substitute ABNN routes through, judged in the dataset's labels: transfer from it is the
        natural adaptive attack (none when its labels cannot be matched to the dataset's)."""
        inner = model.abnn if isinstance(model, TargetOnly) else model
        if not isinstance(inner, ABNN):
            return {}
        name = self.substitute or (VIDEO_SUBSTITUTE if ctx.spec.video else IMAGE_SUBSTITUTE)
        index = columns(name[4:], ctx.dataset) if name.startswith("zoo:") else None
        if index is not None:
            return {"substitute": Columns(inner.substitute, index)}
        if (
            name.startswith("zoo:")
            or (self.substitute_classes or ctx.spec.num_classes) != ctx.spec.num_classes
        ):
            log.info("ABNN: substitute %s has other labels than %s; no transfer source", name, ctx.dataset)
            return {}
        return {"substitute": inner.substitute}

    def networks(self, model: nn.Module) -> dict[str, nn.Module]:
        """Cost accounting: a call of the ABNN is one target pass; the substitute counts on its own."""
        assert isinstance(model, ABNN)
        return {"target": model, "substitute": model.substitute_stages().stem[0]}


def abnn_recipe(name: str, description: str, **fields: Any) -> ABNNRecipe:
    """An ABNN recipe; ``fields`` are ``ABNNRecipe``'s (width, substitute, substitute_classes, options).
    A user registers their own with ``register_defense(abnn_recipe(...))``."""
    stats = fields.get("options", {}).get("stats", "running")
    return ABNNRecipe(
        name=name,
        description=description,
        capabilities=Capabilities(batch_dependent=stats == "batch"),
        settings=TrainSettings(epochs=4, width=8),
        **fields,
    )


@dataclass(frozen=True, kw_only=True)
class TargetOnlyView(ABNNRecipe):
    """ABNN's weights attacked with gradients through the target only (``TargetOnly``)."""

    weights_of: str | None = "abnn"

    def view(self, model: nn.Module, ctx: Context) -> nn.Module:
        return TargetOnly(model)


@dataclass(frozen=True, kw_only=True)
class TransferView(ABNNRecipe):
    """ABNN's weights attacked by transfer from the substitute it routes through (``Transfer``)."""

    weights_of: str | None = "abnn"

    def view(self, model: nn.Module, ctx: Context) -> nn.Module:
        source = ABNNRecipe.sources(self, model, ctx).get("substitute")
        if source is None:
            raise ConfigError(f"abnn-transfer: the substitute's labels do not match dataset '{ctx.dataset}'")
        return Transfer(model, source)

    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        return {}


_COMMON = "target with adaptive BN after the stem and stages 1-3, fed by a frozen substitute pre-trained on a mixture of the built-in data"
register_defense(
    abnn_recipe(
        "abnn",
        f"ABNN: {_COMMON}; the prototype's global form (one mean/std per sample, gamma/beta from a learned map); "
        "target BN running statistics at test (batch-independent). White-box gradients through both networks.",
    )
)
register_defense(
    abnn_recipe(
        "abnn-batch",
        f"ABNN, batch statistics at test: {_COMMON}; target BN and substitute statistics from the current batch "
        "at test too (the prototype's batch semantics; batch-dependent).",
        options={"stats": "batch"},
    )
)
# The per-channel forms use batch statistics at test: their substitute statistics pooled over the training
# batch differ too much from one sample's (measured on shapes: abnn-channel 13% clean with running statistics
# and per-sample substitute statistics at test, 66% with batch statistics).
register_defense(
    abnn_recipe(
        "abnn-channel",
        f"ABNN, literal reading: {_COMMON}; target as wide as the substitute, per-channel statistics, "
        "gamma/beta = the substitute's own BN affine parameters; batch statistics at test (batch-dependent).",
        options={"granularity": "channel", "affine": "substitute", "stats": "batch"},
    )
)
register_defense(
    abnn_recipe(
        "abnn-map",
        f"ABNN, per-channel statistics with a learned map: {_COMMON}; per-channel substitute statistics, "
        "gamma/beta from a map of them; batch statistics at test (batch-dependent).",
        options={"granularity": "channel", "affine": "map", "stats": "batch"},
    )
)

_VIEW = {"capabilities": Capabilities(), "settings": TrainSettings(epochs=4, width=8)}
register_defense(
    TargetOnlyView(
        name="abnn-target-only",
        description="ABNN (weights of 'abnn') attacked with gradients through the target only: the substitute path is detached.",
        **_VIEW,
    )
)
register_defense(
    TransferView(
        name="abnn-transfer",
        description="ABNN (weights of 'abnn') attacked by transfer: gradients from the substitute network ABNN "
        "routes through (its logits of the dataset's classes), success judged on ABNN.",
        **_VIEW,
    )
)
