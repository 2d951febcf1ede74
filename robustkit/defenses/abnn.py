"""ABNN, adaptive batch-normalization networks (Lo & Patel 2024).

A frozen substitute network S sees the same input as the target T. At five taps (after the stem and
after each of the four stages) the target feature is normalized with its own statistics and
re-coloured with the substitute's::

    z'_t = gamma_s * (sigma(z_s) * (z_t - mu(z_t)) / sigma(z_t) + mu(z_s)) + beta_s

Options: statistics per channel or one scalar, reduced over the batch (BatchNorm semantics, the
default: the defense is then batch-dependent) or per sample; gamma_s / beta_s either the substitute's
own BN affine parameters at the tap, or produced from z_s by a learned map (global average pool, then
a linear layer to 2*C_t, initialized to gamma = 1, beta = 0). T trains on clean data with CE; S stays
frozen. Works on images (4-D) and video (5-D) alike.

Evaluation views: white-box through both networks (``abnn``), gradients through the target only
(``abnn-target-only``: the substitute path is detached), and transfer from the substitute
(``abnn-transfer``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..builtin.zoo import ZOO, load_zoo_model
from ..errors import ConfigError
from ..models.checkpoint import load_into
from ..models.normalized import Normalized
from ..training.data import DataSpec
from ..training.seeding import fixed_seed
from ..training.settings import TrainSettings
from .adaptive import Transfer
from .backbones import MEAN, STD, bn_backbone
from .base import Capabilities, Context, DefenseRecipe, register_defense

log = logging.getLogger(__name__)

TAPS = ("stem", "layer1", "layer2", "layer3", "layer4")
GRANULARITY = ("auto", "channel", "scalar")
REDUCE = ("batch", "sample")
AFFINE = ("auto", "substitute", "map")


# ----------------------------------------------------------------------------- functional core
def moments(
    z: torch.Tensor, granularity: str, reduce: str, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation sqrt(var + eps) (biased variance, as BatchNorm), kept broadcastable.

    ``granularity``: 'channel' (one value per channel) or 'scalar'; ``reduce``: 'batch' (pool over the
    batch too) or 'sample' (one value per sample).
    """
    if granularity not in ("channel", "scalar") or reduce not in REDUCE:
        raise ConfigError(
            f"moments: granularity must be channel/scalar and reduce batch/sample, got {granularity}/{reduce}"
        )
    keep = {0} if reduce == "sample" else set()
    if granularity == "channel":
        keep.add(1)
    dims = tuple(d for d in range(z.ndim) if d not in keep)
    var, mean = torch.var_mean(z, dim=dims, keepdim=True, correction=0)
    return mean, torch.sqrt(var + eps)


def adaptive_bn(
    z_t: torch.Tensor,
    z_s: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    *,
    granularity: str = "channel",
    reduce: str = "batch",
    eps: float = 1e-5,
) -> torch.Tensor:
    """``gamma * (sigma(z_s) * (z_t - mu(z_t)) / sigma(z_t) + mu(z_s)) + beta``.

    ``gamma``/``beta`` broadcast against ``z_t``: shape (C,) for one value per channel or (B, C) for one
    per sample and channel (the learned map). Spatial (and temporal) sizes of z_t and z_s may differ.
    """
    if z_t.ndim != z_s.ndim or z_t.shape[0] != z_s.shape[0]:
        raise ConfigError(
            f"adaptive BN: target {tuple(z_t.shape)} and substitute {tuple(z_s.shape)} features differ in rank or batch"
        )
    if granularity == "channel" and z_t.shape[1] != z_s.shape[1]:
        raise ConfigError(
            f"adaptive BN: per-channel statistics need equal channel counts, got target {z_t.shape[1]} and "
            f"substitute {z_s.shape[1]}; use granularity='scalar'"
        )
    mu_t, sd_t = moments(z_t, granularity, reduce, eps)
    mu_s, sd_s = moments(z_s, granularity, reduce, eps)
    shape = (-1, z_t.shape[1]) + (1,) * (z_t.ndim - 2)
    g = gamma.reshape(shape) if gamma.ndim == 2 else gamma.reshape((1, -1) + (1,) * (z_t.ndim - 2))
    b = beta.reshape(shape) if beta.ndim == 2 else beta.reshape((1, -1) + (1,) * (z_t.ndim - 2))
    return g * (sd_s * (z_t - mu_t) / sd_t + mu_s) + b


# ----------------------------------------------------------------------------- layers
class AdaptiveBN(nn.Module):
    """One adaptive BN tap. ``affine='map'`` owns the learned map z_s -> (gamma, beta); with
    ``affine='substitute'`` the caller passes the substitute's BN affine parameters."""

    def __init__(
        self,
        channels_t: int,
        channels_s: int,
        *,
        granularity: str = "auto",
        reduce: str = "batch",
        affine: str = "auto",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for value, allowed, what in (
            (granularity, GRANULARITY, "granularity"),
            (reduce, REDUCE, "reduce"),
            (affine, AFFINE, "affine"),
        ):
            if value not in allowed:
                raise ConfigError(f"ABNN {what} must be one of {', '.join(allowed)}, got {value!r}")
        matched = channels_t == channels_s
        self.granularity = granularity if granularity != "auto" else ("channel" if matched else "scalar")
        self.affine = affine if affine != "auto" else ("substitute" if matched else "map")
        if (self.granularity == "channel" or self.affine == "substitute") and not matched:
            raise ConfigError(
                f"ABNN granularity={self.granularity!r}, affine={self.affine!r} needs equal channel counts at every tap; "
                f"got target {channels_t} vs substitute {channels_s}. Use granularity='scalar', affine='map'."
            )
        self.reduce = reduce
        self.eps = eps
        self.channels_t = channels_t
        self.map: nn.Linear | None = None
        if self.affine == "map":
            self.map = nn.Linear(channels_s, 2 * channels_t)
            with torch.no_grad():
                self.map.weight.zero_()
                self.map.bias.copy_(torch.cat([torch.ones(channels_t), torch.zeros(channels_t)]))

    def forward(
        self,
        z_t: torch.Tensor,
        z_s: torch.Tensor,
        gamma_s: torch.Tensor | None = None,
        beta_s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.map is not None:
            gamma, beta = self.map(z_s.flatten(2).mean(2)).split(self.channels_t, dim=1)
        else:
            if gamma_s is None or beta_s is None:
                raise ConfigError("ABNN affine='substitute' needs the substitute's BN weight and bias")
            gamma, beta = gamma_s, beta_s
        return adaptive_bn(
            z_t, z_s, gamma, beta, granularity=self.granularity, reduce=self.reduce, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, reduce={self.reduce}, affine={self.affine}"


def tap_norm(module: nn.Module) -> nn.modules.batchnorm._BatchNorm:
    """The BatchNorm whose output feeds a tap: the last one of the module outside any shortcut."""
    found = [
        m
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "shortcut" not in n and "downsample" not in n
    ]
    if not found:
        raise ConfigError(f"ABNN: tap module {type(module).__name__} has no BatchNorm layer")
    return found[-1]


def check_backbone(net: nn.Module, what: str) -> None:
    missing = [t for t in (*TAPS, "fc") if not hasattr(net, t)]
    if missing or not (hasattr(net, "pool") or hasattr(net, "avgpool")):
        raise ConfigError(
            f"ABNN {what} must expose stem, layer1..layer4, pool/avgpool and fc; missing {missing or ['pool']}"
        )


class ABNN(nn.Module):
    """Target backbone with adaptive BN after each of the five taps, fed by a frozen substitute.

    Input is in [0, 1]; each network normalizes it with its own mean/std. ``forward(x, detach_substitute=True)``
    cuts the gradient through the substitute path (the target-only-gradient view).
    """

    def __init__(
        self,
        target: nn.Module,
        substitute: Normalized,
        *,
        granularity: str = "auto",
        reduce: str = "batch",
        affine: str = "auto",
        channels: int = 3,
    ) -> None:
        super().__init__()
        check_backbone(target, "target")
        check_backbone(substitute.model, "substitute")
        self.target = target
        self.substitute = substitute
        self.substitute.requires_grad_(False)
        self.register_buffer("mean", torch.full((channels,), MEAN), persistent=False)
        self.register_buffer("std", torch.full((channels,), STD), persistent=False)
        layers = []
        for tap in TAPS:
            ct = tap_norm(getattr(target, tap)).num_features
            cs = tap_norm(getattr(substitute.model, tap)).num_features
            layers.append(AdaptiveBN(ct, cs, granularity=granularity, reduce=reduce, affine=affine))
        self.abn = nn.ModuleList(layers)
        self.substitute.eval()

    def train(self, mode: bool = True) -> ABNN:
        super().train(mode)
        self.substitute.eval()  # frozen: its BN running statistics never move
        return self

    @property
    def batch_dependent(self) -> bool:
        return any(layer.reduce == "batch" for layer in self.abn)

    def substitute_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The substitute's five tap features on [0, 1] input."""
        net = self.substitute.model
        z = net.stem(self.substitute_input(x))
        feats = [z]
        for tap in TAPS[1:]:
            z = getattr(net, tap)(z)
            feats.append(z)
        return feats

    def substitute_input(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.substitute.mean.view(shape)) / self.substitute.std.view(shape)

    def forward(self, x: torch.Tensor, detach_substitute: bool = False) -> torch.Tensor:
        feats = self.substitute_features(x)
        if detach_substitute:
            feats = [f.detach() for f in feats]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        z = (x - self.mean.view(shape)) / self.std.view(shape)
        net, snet = self.target, self.substitute.model
        for tap, layer, z_s in zip(TAPS, self.abn, feats, strict=True):
            z = getattr(net, tap)(z)
            bn = tap_norm(getattr(snet, tap)) if layer.affine == "substitute" else None
            z = layer(z, z_s, None if bn is None else bn.weight, None if bn is None else bn.bias)
        pool = net.pool if hasattr(net, "pool") else net.avgpool
        return net.fc(pool(z).flatten(1))


class TargetOnly(nn.Module):
    """ABNN with the substitute path detached: gradients reach the input only through the target."""

    def __init__(self, abnn: ABNN) -> None:
        super().__init__()
        self.abnn = abnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.abnn(x, detach_substitute=True)


# ----------------------------------------------------------------------------- recipes
def substitute_architecture(spec: DataSpec) -> tuple[Normalized, str]:
    """The substitute's (untrained) architecture and where its trained weights come from: the zoo model
    of a built-in dataset (trained on its whole train split) if it has the five taps, else the
    ``standard`` defense of the dataset."""
    for name in ZOO.names():
        entry = ZOO.create(name)
        if entry.dataset == spec.name:
            net = entry.build()
            if isinstance(net, Normalized) and all(hasattr(net.model, t) for t in (*TAPS, "fc")):
                return net, f"zoo:{name}"
    return Normalized(
        bn_backbone(spec, 8, seed=1), [MEAN] * spec.channels, [STD] * spec.channels
    ), "defense:standard"


def build_abnn(spec: DataSpec, settings: TrainSettings, *, width: int | None = None, **options: Any) -> ABNN:
    substitute, _ = substitute_architecture(spec)
    target = bn_backbone(spec, width or settings.width)
    with fixed_seed(0):  # the maps' random init is overwritten; draw it from a fork, not the caller's RNG
        return ABNN(target, substitute, channels=spec.channels, **options)


def prepare_abnn(model: nn.Module, ctx: Context) -> dict[str, Any]:
    """Load the trained substitute: a user path (``--init``), the zoo model, or the standard defense."""
    assert isinstance(model, ABNN)
    _, source = substitute_architecture(ctx.spec)
    if ctx.init is not None:
        load_into(model.substitute.model, ctx.init)
        source = str(ctx.init)
    elif source.startswith("zoo:"):
        trained = load_zoo_model(source[4:], device="cpu", progress=ctx.progress)
        model.substitute.model.load_state_dict(trained.model.state_dict())
    else:
        trained = ctx.load("standard")
        inner = trained.model if isinstance(trained, Normalized) else trained
        model.substitute.model.load_state_dict(inner.state_dict())
    model.substitute.requires_grad_(False)
    log.info("ABNN substitute weights from %s", source)
    return {"substitute": source, "taps": [layer.extra_repr() for layer in model.abn]}


ABNN_PAPER = "Lo & Patel 2024, Adaptive Batch Normalization Networks for Adversarial Robustness"
ABNN_PUBLISHED = {
    "dataset": "CIFAR-10",
    "clean": 0.875,
    "pgd": 0.315,
    "training_cost_passes": 3,
    "standard": {"clean": 0.934, "pgd": 0.0, "training_cost_passes": 2},
    "pgd-at": {"clean": 0.833, "pgd": 0.516, "training_cost_passes": 12},
}


@dataclass(frozen=True, kw_only=True)
class ABNNRecipe(DefenseRecipe):
    """ABNN: the target (``width``, default ``settings.width``) with adaptive BN fed by the frozen,
    pre-trained substitute; ``options`` go to ``ABNN`` (granularity, affine, reduce). Trained on clean
    data with cross-entropy (the default loss); the substitute's passes count on their own in the cost."""

    width: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    paper: str = ABNN_PAPER
    published: dict[str, Any] = field(default_factory=lambda: dict(ABNN_PUBLISHED))

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return build_abnn(spec, settings, width=self.width, **self.options)

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        assert isinstance(model, ABNN)
        return [p for n, p in model.named_parameters() if not n.startswith("substitute.")]

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        return prepare_abnn(model, ctx)

    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        """The substitute ABNN routes through: transfer from it is the natural adaptive attack."""
        inner = model.abnn if isinstance(model, TargetOnly) else model
        return {"substitute": inner.substitute} if isinstance(inner, ABNN) else {}

    def networks(self, model: nn.Module) -> dict[str, nn.Module]:
        """Cost accounting: a call of the ABNN is one target pass; the substitute counts on its own."""
        assert isinstance(model, ABNN)
        return {"target": model, "substitute": model.substitute.model.stem}


def _abnn_recipe(name: str, description: str, *, width: int | None = None, **options: Any) -> ABNNRecipe:
    batch = options.get("reduce", "batch") == "batch"
    return ABNNRecipe(
        name=name,
        description=description,
        width=width,
        options=options,
        capabilities=Capabilities(batch_dependent=batch),
        settings=TrainSettings(epochs=4, width=width or 8),
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
        assert isinstance(model, ABNN)
        return Transfer(model, model.substitute)

    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        return {}


register_defense(
    _abnn_recipe(
        "abnn",
        "ABNN: target with adaptive BN at five taps fed by a frozen substitute; batch statistics; "
        "per-channel statistics and the substitute's BN affine when channels match, else scalar statistics and "
        "a learned map. White-box gradients through both networks.",
    )
)
register_defense(
    _abnn_recipe(
        "abnn-channel",
        "ABNN, literal reading: target as wide as the substitute, per-channel batch statistics, "
        "gamma/beta = the substitute's own BN affine parameters.",
        width=16,
        granularity="channel",
        affine="substitute",
    )
)
register_defense(
    _abnn_recipe(
        "abnn-map",
        "ABNN, prototype reading: scalar batch statistics and a learned map GAP(z_s) -> (gamma, beta).",
        granularity="scalar",
        affine="map",
    )
)
register_defense(
    _abnn_recipe(
        "abnn-per-sample",
        "ABNN with statistics per sample instead of per batch (batch-independent).",
        reduce="sample",
    )
)

_VIEW = {"capabilities": Capabilities(batch_dependent=True), "settings": TrainSettings(epochs=4, width=8)}
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
        "routes through, success judged on ABNN.",
        **_VIEW,
    )
)
