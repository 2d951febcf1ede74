"""The defense interface: a model plus the capabilities the evaluator must act on (``Defense``,
``Capabilities``, ``as_defense`` for a user's own module), the backend protocol (``DefenseBackend``,
implemented by ``DefenseRecipe``: how to build, train and view each backend) and its registry.

Training and loading trained defenses is ``defenses.loading``; honoring capabilities when attacking is
``defenses.adaptive``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ..training.data import DataSpec
from ..training.loop import cross_entropy
from ..training.settings import StepContext, TrainSettings
from .backbones import build_backbone, normalized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What the evaluator must know about a defense.

    ``stochastic``: outputs are random (evaluate with EOT). ``batch_dependent``: a sample's output
    depends on the rest of the batch (keep batch composition fixed and say so). ``non_differentiable``:
    names of modules without useful gradients (attack them with BPDA).
    """

    stochastic: bool = False
    batch_dependent: bool = False
    non_differentiable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.non_differentiable, str | bytes) or not all(
            isinstance(n, str) and n.strip() for n in self.non_differentiable
        ):
            raise ConfigError(
                f"non_differentiable must be a tuple of submodule names (as model.named_modules() gives "
                f"them, e.g. ('preprocess',)), got {self.non_differentiable!r}"
            )
        if not isinstance(self.stochastic, bool) or not isinstance(self.batch_dependent, bool):
            raise ConfigError(
                f"stochastic and batch_dependent must be True or False, got {self.stochastic!r} and "
                f"{self.batch_dependent!r}"
            )
        object.__setattr__(self, "non_differentiable", tuple(self.non_differentiable))

    def as_dict(self) -> dict[str, Any]:
        return {
            "stochastic": self.stochastic,
            "batch_dependent": self.batch_dependent,
            "non_differentiable": list(self.non_differentiable),
        }


@dataclass
class Defense:
    """``model`` maps [0, 1] input to logits; ``info`` holds provenance, training figures and costs;
    ``sources``: models to transfer attacks from (each one more view of the evaluation; ABNN: its
    substitute)."""

    name: str
    model: nn.Module
    capabilities: Capabilities = field(default_factory=Capabilities)
    info: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class Context:
    """Services for ``prepare`` and ``view``: ``load(name)`` returns another recipe's trained model on the
    same dataset (a standard network to fine-tune or transfer from); ``init`` is a user-given weights path."""

    dataset: str
    spec: DataSpec
    device: torch.device
    progress: bool
    load: Callable[[str], nn.Module]
    init: Path | None = None


class DefenseBackend(Protocol):
    """What a defense backend provides: how to build, train and present it. ``DefenseRecipe`` implements
    it with the defaults of a standard BN ResNet; a backend overrides the methods that differ.

    - ``build(spec, settings)``: the untrained model (normalization inside).
    - ``loss(model, x, y, ctx)``: the per-batch training objective (does the inner attack if any).
    - ``trainable(model)``: the parameters the optimizer updates; everything else is frozen.
    - ``prepare(model, ctx)``: called once before training (load a substitute or initial weights);
      returns provenance info.
    - ``view(model, ctx)``: the evaluation variant (the ``nn.Module`` attacks see); ``weights_of``
      names the recipe whose trained weights a view uses.
    - ``sources(model, ctx)``: models to transfer attacks from (each a view of the evaluation).
    - ``networks(model)``: modules whose forward/backward passes count towards the training cost.
    - ``reference(spec, settings)``: the network whose standard-training step is the cost unit.
    """

    name: str
    description: str
    capabilities: Capabilities
    settings: TrainSettings
    weights_of: str | None
    version: str
    paper: str
    published: dict[str, Any]

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module: ...
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor: ...
    def trainable(self, model: nn.Module) -> list[nn.Parameter]: ...
    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]: ...
    def view(self, model: nn.Module, ctx: Context) -> nn.Module: ...
    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]: ...
    def networks(self, model: nn.Module) -> dict[str, nn.Module]: ...
    def reference(self, spec: DataSpec, settings: TrainSettings) -> nn.Module: ...
    def trained_recipe(self) -> DefenseBackend: ...
    def key(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class DefenseRecipe:
    """A defense backend (see ``DefenseBackend``) with the defaults: the network ``settings.arch`` (a BN
    SmallResNet of ``settings.width`` unless given; ``backbones.build_backbone``) trained with plain cross-entropy on all its parameters, evaluated as it is. Subclasses override
    the methods that differ; their fields are the backend's options."""

    name: str
    description: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    settings: TrainSettings = field(default_factory=TrainSettings)
    weights_of: str | None = None
    version: str = "1"
    paper: str = ""
    published: dict[str, Any] = field(default_factory=dict)

    def build(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return normalized(
            build_backbone(spec, settings.arch, width=settings.width, drop_path=settings.drop_path),
            spec.channels,
        )

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return cross_entropy(model, x, y, ctx)

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def prepare(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        return {}

    def view(self, model: nn.Module, ctx: Context) -> nn.Module:
        return model

    def sources(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        return {}

    def networks(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"model": model}

    def reference(self, spec: DataSpec, settings: TrainSettings) -> nn.Module:
        return normalized(build_backbone(spec, settings.arch, width=settings.width), spec.channels)

    def trained_recipe(self) -> DefenseBackend:
        """The recipe whose weights this one uses (itself unless it is an evaluation view)."""
        return DEFENSES.create(self.weights_of) if self.weights_of else self

    def key(self) -> str:
        """A short hash of what determines the trained weights (for the cache)."""
        blob = json.dumps(
            {
                "name": self.name,
                "version": self.version,
                "settings": dataclasses.asdict(self.settings),
                "torch": torch.__version__.split("+")[0],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFENSES: Registry[DefenseBackend] = Registry("defense", autoload=("robustkit.defenses",))


def register_defense(recipe: DefenseBackend) -> DefenseBackend:
    """Add a recipe to the registry (user code can register its own backends the same way)."""
    DEFENSES.register(recipe.name)(lambda: recipe)
    return recipe


def as_defense(
    obj: Defense | nn.Module,
    *,
    name: str | None = None,
    capabilities: Capabilities | None = None,
    transfer_from: dict[str, nn.Module] | nn.Module | None = None,
    **info: Any,
) -> Defense:
    """Wrap a user's own model (any ``nn.Module`` mapping [0, 1] input to logits) as a Defense.

    ``transfer_from``: a model (or ``{name: model}``) whose gradients a transfer view uses; the model
    itself is never put in eval mode: it is evaluated in the mode it is given.
    """
    if isinstance(obj, Defense):
        return obj
    if not isinstance(obj, nn.Module):
        raise ConfigError(
            f"a defense must be a registered name, a Defense or an nn.Module, got {type(obj).__name__}"
        )
    caps = capabilities or getattr(obj, "capabilities", None) or Capabilities()
    if not isinstance(caps, Capabilities):
        raise ConfigError(f"{type(obj).__name__}.capabilities must be a robustkit Capabilities, got {caps!r}")
    if isinstance(transfer_from, nn.Module):
        transfer_from = {type(transfer_from).__name__: transfer_from}
    sources = dict(transfer_from or {})
    bad = [k for k, v in sources.items() if not isinstance(k, str) or not k or not isinstance(v, nn.Module)]
    if bad:
        raise ConfigError(f"transfer_from must map names to nn.Module source models; bad entries: {bad}")
    return Defense(
        name=name or type(obj).__name__,
        model=obj,
        capabilities=caps,
        info={"source": "python object", **info},
        sources=sources,
    )


def split_spec(spec: str) -> tuple[str, Path | None]:
    """``"abnn:weights.safetensors"`` -> ("abnn", Path); a bare name -> (name, None)."""
    name, sep, path = spec.partition(":")
    if not sep:
        return spec, None
    if not path:
        raise ConfigError(f"defense '{spec}': expected 'name:path/to/weights.safetensors' after the colon")
    return name, Path(path).expanduser()
