"""Resolve ``--model`` specs through a registry of model sources.

A spec is a zoo name, a torchvision or timm architecture with local weights (``resnet18``,
``torchvision:r3d_18``, ``timm:resnet18``), a Python factory ``package.module:function``, or a model
object. Each kind is a ``ModelSource`` registered with ``register_source``; the sources of the layers
above (the built-in zoo) register themselves, so this module imports nothing above ``models``.
Objects of other libraries (ART estimators) are turned into ``nn.Module`` by adapters registered with
``register_adapter``. Weights load only through safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import load_providers, suggest
from .checkpoint import load_into
from .normalized import Normalized

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalize = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class ModelRequest:
    """What the caller asked for besides the spec."""

    dataset: str | None = None
    weights: str | Path | None = None
    num_classes: int | None = None
    normalize: Normalize | None = None
    device: torch.device | str = "cpu"
    progress: bool = True


@dataclass
class Resolved:
    """A source's answer: the model, its provenance, whether it already applied the request's
    ``weights`` and ``normalize`` (otherwise ``load_model`` applies them), and whether the model is the
    user's own object (``user``: kept in the mode it is given) rather than one robustkit built and loaded
    (put in eval mode, the mode it is deployed in)."""

    model: Any
    info: dict[str, Any] = field(default_factory=dict)
    applied_request: bool = False
    user: bool = False


class ModelSource:
    """One way to turn a spec string into a model. Subclasses set ``scheme`` and implement ``claims``
    and ``resolve``; ``names`` feeds "did you mean" suggestions; ``default_for`` picks a model for a
    dataset (the zoo does)."""

    scheme = ""

    def claims(self, spec: str) -> bool:
        raise NotImplementedError

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        raise NotImplementedError

    def names(self) -> list[str]:
        return []

    def default_for(self, dataset: str) -> str | None:
        return None


_SOURCES: list[ModelSource] = []
_ADAPTERS: list[tuple[str, Callable[[Any], Any] | str]] = []


def register_source(source: ModelSource, *, first: bool = False) -> ModelSource:
    """Add a model source (once per scheme); ``first`` puts it before the others."""
    if any(s.scheme == source.scheme for s in _SOURCES):
        return source
    _SOURCES.insert(0, source) if first else _SOURCES.append(source)
    return source


def register_adapter(module_prefix: str, convert: Callable[[Any], Any] | str) -> None:
    """Objects whose class (or a base class) is defined in a module starting with ``module_prefix`` are
    passed through ``convert`` (a callable, or ``'package.module:function'`` imported on first use)."""
    if all(prefix != module_prefix for prefix, _ in _ADAPTERS):
        _ADAPTERS.append((module_prefix, convert))


def _import_object(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path}: cannot import module '{module_name}' ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {path}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def adapt(obj: Any) -> Any:
    """``obj`` converted by the first adapter whose module prefix its class ancestry matches."""
    load_providers("model adapter")
    for prefix, convert in _ADAPTERS:
        if any(c.__module__.startswith(prefix) for c in type(obj).__mro__):
            fn = _import_object(convert, "adapter") if isinstance(convert, str) else convert
            return fn(obj)
    return obj


def sources() -> list[ModelSource]:
    """Every model source, those of the higher layers (the zoo's) loaded on first use."""
    load_providers("model source")
    return list(_SOURCES)


def default_model_for(dataset: str) -> str:
    """The model a source offers for ``dataset`` (the zoo model trained on a built-in dataset)."""
    for source in sources():
        name = source.default_for(dataset)
        if name:
            return name
    raise ConfigError(
        f"no zoo model is trained on '{dataset}'; pass --model (a zoo name, an architecture with --weights, "
        "or package.module:function)"
    )


class FactorySource(ModelSource):
    """``package.module:function``: the function is called without arguments; it may return an
    ``nn.Module``, a callable, or an object an adapter knows (an ART estimator)."""

    scheme = "module"

    def claims(self, spec: str) -> bool:
        head = spec.partition(":")[0]
        return ":" in spec and all(head != s.scheme for s in _SOURCES)

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        raw, model = _call_factory(spec, "--model")
        return Resolved(model, {"kind": "factory", "name": spec}, user=model is raw)


def _call_factory(spec: str, what: str) -> tuple[Any, Any]:
    fn = _import_object(spec, what)
    if not callable(fn):
        raise ConfigError(f"{what} {spec}: '{spec.partition(':')[2]}' is not callable")
    raw = fn()
    result = adapt(raw)
    if not isinstance(result, nn.Module) and not callable(result) and defense_model(result) is None:
        raise ConfigError(f"{what} {spec}: the factory returned {type(result).__name__}, not a model")
    return raw, result


def call_factory(spec: str, what: str = "--model") -> Any:
    """The object ``package.module:function`` returns when called without arguments (converted by an
    adapter where one knows it): an ``nn.Module``, a callable, or a defense (an object with an
    ``nn.Module`` in ``model``, as ``robustkit.defenses.base.Defense``)."""
    return _call_factory(spec, what)[1]


def defense_model(obj: Any) -> nn.Module | None:
    """The model of a defense (``robustkit.defenses.base.Defense``, a layer above this one, recognized by
    its fields: an ``nn.Module`` in ``model`` and ``capabilities``); None for anything else."""
    model = getattr(obj, "model", None)
    if isinstance(obj, nn.Module) or not isinstance(model, nn.Module) or not hasattr(obj, "capabilities"):
        return None
    return model


def _need_weights(spec: str, request: ModelRequest, video: bool = False) -> None:
    if video and (request.weights is None or not request.num_classes):
        raise ConfigError(
            f"--model {spec} is a video architecture: pass --weights FILE and a dataset with classes. "
            "Nothing is downloaded."
        )
    if request.weights is None:
        raise ConfigError(
            f"--model {spec} is an architecture without weights; pass --weights FILE (.safetensors or a state dict). "
            "Nothing is downloaded."
        )


class ArchitectureSource(ModelSource):
    """An image architecture of a library by name, with local weights, ImageNet normalisation unless
    ``normalize`` says otherwise."""

    def _exists(self, name: str) -> bool:
        raise NotImplementedError

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def claims(self, spec: str) -> bool:
        if spec.startswith(f"{self.scheme}:"):
            return True
        return ":" not in spec and self._exists(spec)

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        name = spec.removeprefix(f"{self.scheme}:")
        if not self._exists(name):
            raise ConfigError(f"--model {spec}: {self.scheme} has no architecture '{name}'")
        _need_weights(spec, request)
        kwargs = {"num_classes": request.num_classes} if request.num_classes else {}
        arch = self._build(name, kwargs)
        mean, std = request.normalize or (IMAGENET_MEAN, IMAGENET_STD)
        load_into(arch, request.weights)
        info = {
            "kind": "architecture",
            "name": spec,
            "weights": str(request.weights),
            "mean": list(mean),
            "std": list(std),
        }
        return Resolved(Normalized(arch, mean, std), info, applied_request=True)


class TorchvisionSource(ArchitectureSource):
    scheme = "torchvision"

    def _exists(self, name: str) -> bool:
        import torchvision

        from .video import VIDEO_MODELS

        return name in torchvision.models.list_models() and name not in VIDEO_MODELS

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)


class TimmSource(ArchitectureSource):
    scheme = "timm"

    def _exists(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)


class VideoSource(ModelSource):
    """torchvision and pytorchvideo video architectures (Kinetics / pytorchvideo statistics, SlowFast
    pathway packing), with local weights."""

    scheme = "video"

    def claims(self, spec: str) -> bool:
        from .video import VIDEO_MODELS

        return spec.removeprefix("torchvision:").removeprefix("video:") in VIDEO_MODELS

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        from .video import video_model

        _need_weights(spec, request, video=True)
        mean, std = request.normalize or (None, None)
        name = spec.removeprefix("torchvision:").removeprefix("video:")
        model = video_model(name, request.num_classes, weights=request.weights, mean=mean, std=std)
        info = {"kind": "architecture", "name": spec, "weights": str(request.weights), "video": True}
        if isinstance(model, Normalized):
            info.update(mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
        return Resolved(model, info, applied_request=True)


for _source in (VideoSource(), TorchvisionSource(), TimmSource(), FactorySource()):
    register_source(_source)


def _resolve(spec: str, request: ModelRequest) -> Resolved:
    for source in sources():
        if source.claims(spec):
            return source.resolve(spec, request)
    known = [n for s in sources() for n in s.names()]
    raise ConfigError(
        f"unknown model '{spec}'{suggest(spec, known)}: not a zoo model ({', '.join(known)}), "
        "a torchvision or timm architecture, or package.module:function"
    )


def load_model(
    spec: str | nn.Module | Callable | None,
    *,
    dataset: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    normalize: Normalize | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model on ``device``, provenance info).

    A model robustkit builds and loads itself (zoo, architectures with ``weights``) is put in eval mode.
    A user's own model (an ``nn.Module`` object, what a ``package.module:function`` factory returns, a
    defense's model) is never: it is evaluated in the mode it is given (an ART estimator is evaluated as
    ART's ``predict`` runs it, in eval mode), so a model with BatchNorm in train
    mode stays batch-dependent (and ``robustkit.defenses.adaptive.adapt`` says so). A defense
    (``robustkit.defenses.base.Defense``) passes its model through; its transfer sources move along.
    """
    request = ModelRequest(dataset, weights, num_classes, normalize, device, progress)
    if spec is None:
        if dataset is None:
            raise ConfigError("no model given and no built-in dataset to pick a zoo model for")
        spec = default_model_for(dataset)
    given, spec = spec, adapt(spec)
    if isinstance(spec, str):
        resolved = _resolve(spec, request)
    else:  # an object an adapter converted (an ART estimator) is deployed the way its library predicts: eval
        resolved = Resolved(spec, {"kind": "object", "name": type(spec).__name__}, user=spec is given)
    model, info = resolved.model, resolved.info
    inner = defense_model(model)
    if inner is not None:
        for source in getattr(model, "sources", {}).values():
            source.to(device)
        info = {**info, "kind": "defense", "name": str(getattr(model, "name", info["name"]))}
        model = inner
    if weights is not None and not resolved.applied_request:
        if not isinstance(model, nn.Module):
            raise ConfigError("--weights needs a model that is an nn.Module")
        load_into(model.model if isinstance(model, Normalized) else model, weights)
        info["weights"] = str(weights)
    if normalize is not None and not resolved.applied_request:
        wrapped = Normalized(model, *normalize)
        wrapped.training = getattr(model, "training", False)  # the wrapper alone: the user's mode is kept
        model = wrapped
    if isinstance(model, nn.Module):
        model = model.to(device) if resolved.user else model.to(device).eval()
    elif not callable(model):
        raise ModelError(f"{spec!r} is not a model")
    return model, info
