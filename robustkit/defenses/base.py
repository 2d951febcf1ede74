"""The defense interface: a model plus the capabilities the evaluator must act on, and the registry of
defense recipes (how to build, train and view each backend).

``load_defense(name, dataset=...)`` returns a :class:`Defense`. ``name`` is a registered recipe
(trained on first use and cached beside the model zoo), ``"recipe:path/to/weights.safetensors"`` (a
user's checkpoint for that recipe's architecture, loaded safely), a :class:`Defense`, or any
``nn.Module`` (a user's own defense; declare its capabilities with :func:`as_defense`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .backbones import DataSpec, bn_resnet

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
            isinstance(n, str) for n in self.non_differentiable
        ):
            raise ConfigError(
                f"non_differentiable must be a tuple of module names, got {self.non_differentiable!r}"
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
    """``model`` maps [0, 1] input to logits; ``info`` holds provenance, training figures and costs."""

    name: str
    model: nn.Module
    capabilities: Capabilities = field(default_factory=Capabilities)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Training hyper-parameters of a recipe (the CLI overrides epochs, batch size, train size and lr).

    The defaults are the reduced scale robustkit trains at on a CPU (a few hundred steps on 2400 images):
    Adam, small batches and, for adversarial recipes, an eps ramp. Without the ramp, PGD training from
    scratch did not get off the ground at this budget (10% accuracy after 300 steps on shapes); the
    papers' full-scale runs use SGD for ~100-200 epochs instead.
    """

    epochs: int = 4
    batch_size: int = 32
    optimizer: str = "adam"  # "adam" or "sgd" (momentum, Nesterov)
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps with a linear learning-rate ramp, then linear decay to 0
    train_size: int | None = 2400  # None: the whole train split
    agc: float | None = None  # adaptive gradient clipping factor (timm.utils.agc), None: off
    eps: float = 8 / 255  # adversarial training budget (L-inf), when the recipe is adversarial
    steps: int = 10
    step_size: float = 2 / 255
    eps_warmup: float = 0.0  # fraction of steps over which the training eps ramps linearly from 0 to eps
    width: int = 8

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 <= self.eps_warmup <= 1 or not 0 <= self.warmup <= 1:
            raise ConfigError("warmup and eps_warmup are fractions of the training steps, in [0, 1]")


@dataclass
class StepContext:
    """What a recipe's loss function gets besides (model, x, y): the settings and a generator for
    the random starts of adversarial examples (seeded per epoch, so resumed training is identical)."""

    settings: TrainSettings
    generator: torch.Generator
    fraction: float = 1.0  # share of training steps done, counting the current one

    def budget(self) -> tuple[float, float]:
        """(eps, step size) of the inner attack now: full size, or ramped during ``eps_warmup``."""
        s = self.settings
        scale = min(1.0, self.fraction / s.eps_warmup) if s.eps_warmup > 0 else 1.0
        return s.eps * scale, s.step_size * scale


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


def _all_trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _networks(model: nn.Module) -> dict[str, nn.Module]:
    return {"model": model}


def _reference(spec: DataSpec, settings: TrainSettings) -> nn.Module:
    return bn_resnet(spec, settings.width)


@dataclass(frozen=True, kw_only=True)
class DefenseRecipe:
    """How to build, train and present one defense backend.

    - ``build(spec, settings)``: the untrained model (normalization inside).
    - ``loss(model, x, y, ctx)``: the per-batch training objective (does the inner attack if any).
    - ``trainable(model)``: the parameters the optimizer updates; everything else is frozen.
    - ``prepare(model, ctx)``: called once before training (load a substitute or initial weights);
      returns provenance info.
    - ``view(model, ctx)``: the evaluation variant (an ``nn.Module`` attacks see); ``weights_of`` names
      the recipe whose trained weights the view uses.
    - ``networks(model)``: modules whose forward/backward passes count towards the training cost.
    - ``reference(spec, settings)``: the network whose standard-training step is the cost unit.
    """

    name: str
    description: str
    build: Callable[[DataSpec, TrainSettings], nn.Module] = lambda spec, s: bn_resnet(spec, s.width)
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, StepContext], torch.Tensor] | None = None
    trainable: Callable[[nn.Module], list[nn.Parameter]] = _all_trainable
    prepare: Callable[[nn.Module, Context], dict[str, Any]] | None = None
    view: Callable[[nn.Module, Context], nn.Module] | None = None
    networks: Callable[[nn.Module], dict[str, nn.Module]] = _networks
    reference: Callable[[DataSpec, TrainSettings], nn.Module] = _reference
    capabilities: Capabilities = field(default_factory=Capabilities)
    settings: TrainSettings = field(default_factory=TrainSettings)
    weights_of: str | None = None
    version: str = "1"
    paper: str = ""
    published: dict[str, Any] = field(default_factory=dict)

    def trained_recipe(self) -> DefenseRecipe:
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


DEFENSES: Registry[DefenseRecipe] = Registry("defense", autoload=("robustkit.defenses",))


def register_defense(recipe: DefenseRecipe) -> DefenseRecipe:
    """Add a recipe to the registry (user code can register its own backends the same way)."""
    DEFENSES.register(recipe.name)(lambda: recipe)
    return recipe


def as_defense(
    obj: Defense | nn.Module,
    *,
    name: str | None = None,
    capabilities: Capabilities | None = None,
    **info: Any,
) -> Defense:
    """Wrap a user's own model (any ``nn.Module`` mapping [0, 1] input to logits) as a Defense."""
    if isinstance(obj, Defense):
        return obj
    if not isinstance(obj, nn.Module):
        raise ConfigError(
            f"a defense must be a registered name, a Defense or an nn.Module, got {type(obj).__name__}"
        )
    caps = capabilities or getattr(obj, "capabilities", None) or Capabilities()
    if not isinstance(caps, Capabilities):
        raise ConfigError(f"{type(obj).__name__}.capabilities must be a robustkit Capabilities, got {caps!r}")
    return Defense(
        name=name or type(obj).__name__,
        model=obj,
        capabilities=caps,
        info={"source": "python object", **info},
    )


def split_spec(spec: str) -> tuple[str, Path | None]:
    """``"abnn:weights.safetensors"`` -> ("abnn", Path); a bare name -> (name, None)."""
    name, sep, path = spec.partition(":")
    if not sep:
        return spec, None
    if not path:
        raise ConfigError(f"defense '{spec}': expected 'name:path/to/weights.safetensors' after the colon")
    return name, Path(path).expanduser()


def load_defense(
    name: str | Defense | nn.Module,
    *,
    dataset: str = "shapes",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Defense:
    """A ready-to-evaluate defense (model in eval mode on ``device``).

    A registered name trains on first use (cached under ``$ROBUSTKIT_CACHE/defenses``); ``name:path``
    loads a user checkpoint (safetensors, or a torch file with ``weights_only=True``; pickles carrying
    code are refused with ``UnsafeCheckpointError``).
    """
    from ..device import resolve_device
    from .train import cached_model, model_from_weights

    if not isinstance(name, str):
        defense = as_defense(name)
        defense.model.to(resolve_device(device)).eval()
        return defense
    recipe_name, path = split_spec(name)
    recipe = DEFENSES.create(recipe_name)
    dev = resolve_device(device)
    if path is not None:
        model, info = model_from_weights(recipe.trained_recipe(), dataset, path)
    else:
        model, info = cached_model(recipe.trained_recipe().name, dataset, dev, progress)
    model = model.to(dev).eval()
    if recipe.view is not None:
        ctx = Context(
            dataset=dataset,
            spec=DataSpec.from_dict(info["spec"]),
            device=dev,
            progress=progress,
            load=lambda other: cached_model(other, dataset, dev, progress)[0].to(dev).eval(),
        )
        model = recipe.view(model, ctx).to(dev).eval()
    info = {
        **info,
        "recipe": recipe.name,
        "description": recipe.description,
        "paper": recipe.paper,
        "published": recipe.published,
    }
    return Defense(
        name=name if path is None else f"{recipe_name}:{path.name}",
        model=model,
        capabilities=recipe.capabilities,
        info=info,
    )
