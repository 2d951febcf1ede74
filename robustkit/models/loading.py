"""Resolve ``--model`` specs through a registry of model sources.

A spec is a zoo name, a torchvision or timm architecture with local weights or the library's pretrained
ones (``resnet18``, ``torchvision:r3d_18``, ``timm:resnet18``; :mod:`.pretrained`), a model of RobustBench's
zoo (``robustbench:cifar10/Linf/Standard``; :mod:`.robustbench`), a Python factory
``package.module:function`` (its module also found in the current directory), or a model object. Each kind is a ``ModelSource`` registered with ``register_source``; the sources of the layers
above (the built-in zoo) register themselves, so this module imports nothing above ``models``.
Objects of other libraries (ART estimators) are turned into ``nn.Module`` by adapters registered with
``register_adapter``. Weights load only through safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import load_providers, suggest
from .checkpoint import load_into
from .checks import check_not_meta
from .normalized import (
    Normalized,
    NormalizeOption,
    normalization_record,
    parse_normalize,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRequest:
    """What the caller asked for besides the spec."""

    dataset: str | None = None
    weights: str | Path | None = None
    num_classes: int | None = None
    normalize: NormalizeOption = None
    device: torch.device | str = "cpu"
    progress: bool = True
    # weights from the library's own registry (torchvision, timm): True for the default weights, or the
    # name of one (torchvision's ``IMAGENET1K_V1``; timm names its weights in the model name)
    pretrained: bool | str = False


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

    def suggestions(self) -> list[str]:
        """Names a misspelt spec is compared with (``names`` and, for a library, its architectures)."""
        return self.names()

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


def _import_module(name: str, what: str, path: str) -> Any:
    """Import ``name``; a module or package in the current directory is found as ``python -m`` would find
    it, also from the ``robustkit`` console script (whose ``sys.path`` does not hold the current
    directory). Whatever the import raises is a ``ConfigError`` naming the module."""
    try:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            top, cwd = name.partition(".")[0], os.getcwd()
            here = os.path.isfile(os.path.join(cwd, f"{top}.py")) or os.path.isdir(os.path.join(cwd, top))
            if exc.name != top or not here or cwd in sys.path:
                raise
            sys.path.insert(0, cwd)
            importlib.invalidate_caches()
            log.debug("%s %s: importing '%s' from the current directory %s", what, path, top, cwd)
            return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path}: cannot import module '{name}' ({exc})") from exc
    except Exception as exc:  # the user's module failed while being imported
        raise ConfigError(
            f"{what} {path}: importing module '{name}' raised {type(exc).__name__}: {exc}"
        ) from exc


def _import_object(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path}: expected package.module:function")
    obj: Any = _import_module(module_name, what, path)
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


def _required_parameters(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        return []
    kinds = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )
    return [p.name for p in params if p.default is inspect.Parameter.empty and p.kind in kinds]


def _call_factory(spec: str, what: str) -> tuple[Any, Any]:
    fn = _import_object(spec, what)
    expected = "a model (an nn.Module, a callable mapping images to logits, or an ART estimator)"
    if not callable(fn):
        raise ModelError(
            f"{what} {spec}: '{spec.partition(':')[2]}' is a {type(fn).__name__}, not a function; expected a "
            f"factory that returns {expected} when called without arguments"
        )
    required = _required_parameters(fn)
    if required:
        raise ModelError(
            f"{what} {spec}: the factory needs argument(s) {', '.join(required)}, but robustkit calls it without "
            f"arguments; expected a function that returns {expected}. Wrap it in a function of your own"
        )
    try:
        raw = fn()
    except Exception as exc:  # the user's factory: name it and what it raised
        raise ModelError(
            f"{what} {spec}: the factory raised {type(exc).__name__}: {exc}; expected it to return {expected} "
            "(pass --debug for the traceback)"
        ) from exc
    result = adapt(raw)
    if not isinstance(result, nn.Module) and not callable(result) and defense_model(result) is None:
        raise ModelError(f"{what} {spec}: the factory returned {type(result).__name__}; expected {expected}")
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
    if request.pretrained and request.weights is not None:
        raise ConfigError(f"--model {spec}: pass either --pretrained or --weights FILE, not both")
    if video and (request.weights is None or not request.num_classes):
        raise ConfigError(
            f"--model {spec} is a video architecture: pass --weights FILE and a dataset with classes. "
            "Nothing is downloaded."
        )
    if request.weights is None and not request.pretrained:
        raise ConfigError(
            f"--model {spec} is an architecture without weights; pass --weights FILE (.safetensors or a state "
            "dict), or --pretrained for the library's own pretrained weights"
        )


def _normalized(
    model: nn.Module, request: ModelRequest, default: tuple[Any, Any, str]
) -> tuple[nn.Module, dict]:
    """``model`` behind the requested normalization (the architecture's ``default`` when none is asked for),
    and the record of it."""
    if request.normalize == "none":
        return model, normalization_record(None, None, "none (--normalize none)")
    mean, std, source = default if request.normalize is None else (*request.normalize, "--normalize")
    return Normalized(model, mean, std), normalization_record(mean, std, source)


class ArchitectureSource(ModelSource):
    """An image architecture of a library by name, with local ``--weights`` or the library's own
    ``--pretrained`` weights, behind the input normalization of its metadata unless ``normalize`` says
    otherwise."""

    def _exists(self, name: str) -> bool:
        raise NotImplementedError

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def _pretrained(self, spec: str, name: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    def _default_normalization(self, name: str, model: nn.Module) -> tuple[Any, Any, str]:
        raise NotImplementedError

    def _default_input(self, name: str) -> dict[str, Any] | None:
        """``info["input"]`` from the library's metadata (:mod:`.inputsize`); None: the model's own
        attributes say (timm's ``pretrained_cfg``)."""
        return None

    def claims(self, spec: str) -> bool:
        if spec.startswith(f"{self.scheme}:"):
            return True
        return ":" not in spec and self._exists(spec)

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        name = spec.removeprefix(f"{self.scheme}:")
        if not self._exists(name):
            raise ConfigError(
                f"--model {spec}: {self.scheme} has no architecture '{name}'{suggest(name, self.suggestions())}"
            )
        _need_weights(spec, request)
        if request.pretrained:
            arch, info = self._pretrained(spec, name, request)
            default = info.pop("normalization_default")
        else:
            kwargs = {"num_classes": request.num_classes} if request.num_classes else {}
            arch = self._build(name, kwargs)
            load_into(arch, request.weights)
            info, default = {"weights": str(request.weights)}, self._default_normalization(name, arch)
            if (declared := self._default_input(name)) is not None:
                info["input"] = declared
        model, record = _normalized(arch, request, default)
        info = {"kind": "architecture", "name": spec, **info, "normalization": record}
        if record["mean"] is not None:
            info.update(mean=record["mean"], std=record["std"])
        return Resolved(model, info, applied_request=True)


class TorchvisionSource(ArchitectureSource):
    scheme = "torchvision"

    def _exists(self, name: str) -> bool:
        import torchvision

        from .video import VIDEO_MODELS

        return name in torchvision.models.list_models() and name not in VIDEO_MODELS

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    def suggestions(self) -> list[str]:
        import torchvision

        return list(torchvision.models.list_models(module=torchvision.models))

    def _pretrained(self, spec: str, name: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any]]:
        from .pretrained import torchvision_pretrained

        return torchvision_pretrained(spec, name, request.pretrained, request.num_classes, request.progress)

    def _default_normalization(self, name: str, model: nn.Module) -> tuple[Any, Any, str]:
        from .pretrained import torchvision_normalization

        return torchvision_normalization(name)

    def _default_input(self, name: str) -> dict[str, Any] | None:
        from .inputsize import torchvision_input

        return torchvision_input(name)


class TimmSource(ArchitectureSource):
    scheme = "timm"

    def _exists(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    def suggestions(self) -> list[str]:
        import timm

        return list(timm.list_models())

    def _pretrained(self, spec: str, name: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any]]:
        from .pretrained import timm_pretrained

        if isinstance(request.pretrained, str) and "." not in name:
            name = f"{name}.{request.pretrained}"  # --pretrained TAG names timm's weights
        return timm_pretrained(spec, name, request.num_classes)

    def _default_normalization(self, name: str, model: nn.Module) -> tuple[Any, Any, str]:
        from .pretrained import timm_normalization

        return timm_normalization(name, model)


class VideoSource(ModelSource):
    """torchvision and pytorchvideo video architectures (Kinetics / pytorchvideo statistics, SlowFast
    pathway packing), with local weights."""

    scheme = "video"

    def claims(self, spec: str) -> bool:
        from .video import VIDEO_MODELS

        return spec.removeprefix("torchvision:").removeprefix("video:") in VIDEO_MODELS

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        from .inputsize import video_input
        from .video import video_model

        _need_weights(spec, request, video=True)
        if request.pretrained:
            raise ConfigError(f"--model {spec}: --pretrained is for image architectures; pass --weights FILE")
        own = request.normalize is None
        mean, std = (None, None) if request.normalize in (None, "none") else request.normalize
        name = spec.removeprefix("torchvision:").removeprefix("video:")
        model = video_model(name, request.num_classes, weights=request.weights, mean=mean, std=std,
                            normalize=request.normalize != "none")  # fmt: skip
        info = {"kind": "architecture", "name": spec, "weights": str(request.weights), "video": True}
        if (declared := video_input(name)) is not None:
            info["input"] = declared
        record = normalization_record(None, None, "none (--normalize none)")
        if isinstance(model, Normalized):
            info.update(mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
            source = f"the {name} family's training statistics" if own else "--normalize"
            record = normalization_record(info["mean"], info["std"], source)
        return Resolved(model, {**info, "normalization": record}, applied_request=True)


class RobustBenchSource(ModelSource):
    """``robustbench:<dataset>/<threat>/<name>``: a model of RobustBench's zoo (its architecture, its
    checkpoint from RobustBench's cache layout); see :mod:`robustkit.models.robustbench`."""

    scheme = "robustbench"

    def claims(self, spec: str) -> bool:
        return spec.startswith("robustbench:")

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        from .robustbench import load_robustbench

        if request.weights is not None:
            raise ConfigError(f"--model {spec} reads RobustBench's own checkpoint; drop --weights")
        model, info = load_robustbench(spec, num_classes=request.num_classes, progress=request.progress)
        if request.normalize not in (None, "none"):
            model = Normalized(model, *request.normalize)
            info["normalization"] = normalization_record(*request.normalize, "--normalize")
        return Resolved(model, info, applied_request=True)


for _source in (VideoSource(), TorchvisionSource(), TimmSource(), RobustBenchSource(), FactorySource()):
    register_source(_source)


def _resolve(spec: str, request: ModelRequest) -> Resolved:
    for source in sources():
        if source.claims(spec):
            if request.pretrained and not isinstance(source, ArchitectureSource):
                raise ConfigError(
                    f"--pretrained applies to torchvision:NAME and timm:NAME architectures, not to --model {spec}"
                )
            return source.resolve(spec, request)
    known = [n for s in sources() for n in s.names()]
    close = suggest(spec, sorted({n for s in sources() for n in s.suggestions()}))
    raise ConfigError(
        f"unknown model '{spec}'{close}: not a zoo model ({', '.join(known)}), "
        "a torchvision or timm architecture, robustbench:<dataset>/<threat>/<name>, or package.module:function"
    )


def load_model(
    spec: str | nn.Module | Callable | None,
    *,
    dataset: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    normalize: NormalizeOption | Sequence = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    pretrained: bool | str = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model on ``device``, provenance info).

    A model robustkit builds and loads itself (zoo, architectures with ``weights`` or ``pretrained``,
    RobustBench's) is put in eval mode. A user's own model (an ``nn.Module`` object, what a
    ``package.module:function`` factory returns, a defense's model) is never: it is evaluated in the mode it
    is given (an ART estimator is evaluated as ART's ``predict`` runs it, in eval mode), so a model with
    BatchNorm in train mode stays batch-dependent (and ``robustkit.defenses.adaptive.adapt`` says so). A
    defense (``robustkit.defenses.base.Defense``) passes its model through; its transfer sources move along.

    ``normalize`` (:func:`parse_normalize`): None for the architecture's own (torchvision's weights
    transforms, timm's ``pretrained_cfg``; none added to robustkit's zoo models, RobustBench's or your own),
    ``"none"``, ``"imagenet"``, ``"MEAN,STD"`` or ``(mean, std)``. ``info["normalization"]`` records what was
    applied (``mean``, ``std``: None when nothing was added; ``source``).
    """
    normalize = parse_normalize(normalize)
    request = ModelRequest(dataset, weights, num_classes, normalize, device, progress, pretrained)
    if spec is None:
        if dataset is None:
            raise ConfigError("no model given and no built-in dataset to pick a zoo model for")
        spec = default_model_for(dataset)
    if pretrained and not isinstance(spec, str):
        raise ConfigError(
            "--pretrained applies to torchvision:NAME and timm:NAME architectures, not to a model object"
        )
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
    if not resolved.applied_request:
        own = (
            "the zoo model normalizes inside" if info.get("kind") == "zoo" else "the model gets [0, 1] input"
        )
        info["normalization"] = normalization_record(None, None, f"none added ({own})")
        if isinstance(normalize, tuple):
            wrapped = Normalized(model, *normalize)
            wrapped.training = getattr(model, "training", False)  # the wrapper alone: the user's mode is kept
            model = wrapped
            info["normalization"] = normalization_record(*normalize, "--normalize")
    name = info.get("name") or (spec if isinstance(spec, str) else type(spec).__name__)
    check_not_meta(model, str(name))
    if isinstance(model, nn.Module):
        model = model.to(device) if resolved.user else model.to(device).eval()
    elif not callable(model):
        raise ModelError(f"{spec!r} is not a model")
    return model, info
