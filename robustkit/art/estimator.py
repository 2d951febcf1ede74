"""ART estimators as robustkit models and robustkit models as ART estimators.

``from_estimator(estimator)`` unwraps a ``PyTorchClassifier`` into one ``nn.Module`` that maps
robustkit input (``[0, 1]``, channels first) to logits: it rescales to the estimator's
``clip_values``, permutes to the estimator's layout, applies its preprocessing (``(mean, std)`` and any
PyTorch preprocessing defences, exactly as ART's ``loss_gradient`` does) and runs its torch model. The
attack loop stays in torch: no numpy round trip per step.

``to_estimator(model_or_defense)`` goes the other way: a robustkit model, zoo name or defense as a
``PyTorchClassifier`` with ``clip_values=(0, 1)`` (or any range you give), so ART's own attacks run
against it. Video models can be offered in ART's frame-major layout ``(N, T, C, H, W)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..models.state import preserved
from .boundary import (
    ValueRange,
    check_layout,
    detect_layout,
    from_robustkit,
    shape_from_robustkit,
    shape_to_robustkit,
    to_robustkit,
)

log = logging.getLogger(__name__)


def is_art_estimator(obj: object) -> bool:
    """True for any ART estimator (checked by class ancestry, without importing ART)."""
    return any(c.__module__.startswith("art.estimators") for c in type(obj).__mro__)


class Standardize(nn.Module):
    """ART's ``(x - mean) / std`` with ART's broadcasting rule, fixed for one sample shape."""

    def __init__(self, mean: Any, std: Any, sample_shape: Sequence[int]) -> None:
        super().__init__()
        from art.preprocessing.standardisation_mean_std.utils import broadcastable_mean_std

        mean = np.asarray(mean, dtype=np.float32)
        std = np.asarray(std, dtype=np.float32)
        probe = np.empty((2, *sample_shape), dtype=np.float32)
        mean, std = broadcastable_mean_std(probe, mean, std)
        self.register_buffer("mean", torch.as_tensor(mean), persistent=False)
        self.register_buffer("std", torch.as_tensor(std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class ARTPreprocessor(nn.Module):
    """One of ART's PyTorch preprocessors (``forward(x, y) -> (x, y)``), differentiable as in ART."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x, None)[0]


class EstimatorModel(nn.Module):
    """An ART ``PyTorchClassifier`` as a robustkit model: robustkit input in, logits out.

    ``model`` is the estimator's own torch module (shared, not copied); ``layout`` the estimator's
    input layout; ``lo`` / ``hi`` its ``clip_values``; ``preprocess`` its preprocessing chain.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layout: str,
        value_range: ValueRange,
        preprocess: Sequence[nn.Module] = (),
        input_shape: Sequence[int] = (),
        nb_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.layout = check_layout(layout)
        self.value_range = value_range
        self.preprocess = nn.ModuleList(preprocess)
        self.input_shape = tuple(input_shape)
        self.nb_classes = nb_classes
        self.register_buffer("lo", torch.as_tensor(value_range.lo), persistent=False)
        self.register_buffer("hi", torch.as_tensor(value_range.hi), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = from_robustkit(x, self.layout)
        x = self.lo.to(x.dtype) + x * (self.hi - self.lo).to(x.dtype)
        for op in self.preprocess:
            x = op(x)
        out = self.model(x)
        if isinstance(out, list | tuple):
            out = out[-1]
        return out


def from_estimator(estimator: Any, *, layout: str | None = None) -> EstimatorModel:
    """An ART ``PyTorchClassifier`` (or subclass) as an ``nn.Module`` on robustkit input.

    ``layout`` overrides the layout read from ``input_shape`` / ``channels_first`` (for video,
    ``'NTCHW'`` or ``'NCTHW'``). Raises ``ModelError`` for estimators robustkit cannot differentiate
    in torch (not PyTorch, or numpy-only preprocessing defences).
    """
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
    from art.estimators.classification.pytorch import PyTorchClassifier
    from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch

    if isinstance(estimator, EstimatorModel):
        return estimator
    if not isinstance(estimator, PyTorchClassifier):
        raise ModelError(
            f"robustkit runs ART estimators that wrap a torch model (PyTorchClassifier); got {type(estimator).__name__}"
        )
    input_shape = tuple(estimator.input_shape)
    lay = detect_layout(input_shape, estimator.channels_first, layout)
    ops: list[nn.Module] = []
    for op in estimator.preprocessing_operations:
        if not op.apply_predict:
            continue
        if isinstance(op, StandardisationMeanStd | StandardisationMeanStdPyTorch):
            ops.append(Standardize(op.mean, op.std, input_shape))
        elif isinstance(op, PreprocessorPyTorch):
            ops.append(ARTPreprocessor(op))
        else:
            raise ModelError(
                f"the estimator's preprocessing {type(op).__name__} runs in numpy; robustkit attacks differentiate "
                "the model in torch. Use its PyTorch variant (e.g. SpatialSmoothingPyTorch) or drop it."
            )
    if estimator.postprocessing_defences:
        names = ", ".join(type(p).__name__ for p in estimator.postprocessing_defences)
        log.warning(
            "postprocessing defences (%s) act on predictions only; robustkit attacks the logits", names
        )
    module = EstimatorModel(
        estimator.model,
        layout=lay,
        value_range=ValueRange.of(estimator.clip_values),
        preprocess=ops,
        input_shape=input_shape,
        nb_classes=estimator.nb_classes,
    )
    return module.to(estimator.device)


class RobustkitModel(nn.Module):
    """A robustkit model behind an ART-facing input: ``layout`` and values in ``[lo, hi]``."""

    def __init__(self, model: nn.Module, *, layout: str, value_range: ValueRange) -> None:
        super().__init__()
        self.model = model
        self.layout = check_layout(layout)
        self.register_buffer("lo", torch.as_tensor(value_range.lo), persistent=False)
        self.register_buffer("hi", torch.as_tensor(value_range.hi), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.lo.to(x.dtype)) / (self.hi - self.lo).to(x.dtype)
        return self.model(to_robustkit(x, self.layout))


class _Callable(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _resolve(
    obj: Any, dataset: str | None, device: str | torch.device
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """(model on robustkit input, robustkit sample shape if known) from a model, defense or name."""
    from ..builtin.zoo import ZOO
    from ..defenses.base import DEFENSES, Defense
    from ..defenses.loading import load_defense
    from ..models.loading import load_model

    shape = None
    if isinstance(obj, str):
        if obj.split(":", 1)[0] in DEFENSES and obj not in ZOO:
            obj = load_defense(obj, dataset=dataset or "shapes", device=device, progress=False)
        else:
            obj, _ = load_model(obj, dataset=dataset, device=device, progress=False)
    if isinstance(obj, Defense):
        spec = obj.info.get("spec")
        if isinstance(spec, dict) and "shape" in spec:
            shape = tuple(int(s) for s in spec["shape"])
        if obj.capabilities.batch_dependent:
            log.warning(
                "defense %s is batch-dependent: ART's batch_size changes what each sample sees", obj.name
            )
        obj = obj.model
    if is_art_estimator(obj):
        raise ConfigError("this is already an ART estimator")
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ConfigError(f"to_estimator needs a model, a defense or a name, got {type(obj).__name__}")
        obj = _Callable(obj)
    return obj, shape


def to_estimator(
    model_or_defense: Any,
    *,
    input_shape: Sequence[int] | None = None,
    nb_classes: int | None = None,
    clip_values: tuple[Any, Any] = (0.0, 1.0),
    layout: str | None = None,
    dataset: str | None = None,
    loss: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device_type: str | None = None,
) -> Any:
    """A robustkit model or defense as an ART ``PyTorchClassifier``.

    ``model_or_defense``: an ``nn.Module`` on ``[0, 1]`` input (normalization inside), a
    ``robustkit.defenses.base.Defense`` (ABNN with its substitute, NoFrost, ...), a zoo model name or a
    defense name (``dataset`` picks the data it is trained on). ``input_shape``: one sample in the
    estimator's layout; read from the defense or from the first sample of ``dataset`` when omitted.
    ``layout``: ``NCHW`` (default for images), ``NHWC``, ``NCTHW`` (default for video), ``NTCHW``
    (ART's frame-major video layout) or ``NTHWC``. ``clip_values``: the value range the estimator's
    users feed (the model still sees ``[0, 1]``). ``nb_classes`` is read from one forward pass when omitted.
    """
    from art.estimators.classification import PyTorchClassifier

    device = "cpu"
    model, rk_shape = _resolve(model_or_defense, dataset, device_type_to_device(device_type))
    params = list(model.parameters())
    if params:
        device = str(params[0].device)
    if input_shape is None:
        if rk_shape is None and dataset is not None:
            from ..data.loading import load_dataset

            rk_shape = tuple(load_dataset(dataset, "test")[0][0].shape)
        if rk_shape is None:
            raise ConfigError("to_estimator: pass input_shape (one sample, e.g. (3, 32, 32)) or dataset=")
        lay = layout or ("NCTHW" if len(rk_shape) == 4 else "NCHW")
        check_layout(lay)
        input_shape = shape_from_robustkit(rk_shape, lay)
    else:
        input_shape = tuple(int(s) for s in input_shape)
        lay = layout or ("NCTHW" if len(input_shape) == 4 else "NCHW")
        check_layout(lay)
        rk_shape = shape_to_robustkit(input_shape, lay)
    if len(lay) - 1 != len(input_shape):
        raise ConfigError(f"layout {lay} does not fit input shape {tuple(input_shape)}")
    rng = ValueRange.of(clip_values)
    net = (
        model if lay in ("NCHW", "NCTHW") and rng.unit else RobustkitModel(model, layout=lay, value_range=rng)
    )
    if nb_classes is None:
        with preserved(model), torch.no_grad():
            model.eval()
            probe = torch.full((1, *rk_shape), 0.5, device=device)
            nb_classes = int(model(probe).shape[-1])
    return PyTorchClassifier(
        model=net,
        loss=loss or nn.CrossEntropyLoss(),
        optimizer=optimizer,
        input_shape=tuple(input_shape),
        nb_classes=nb_classes,
        channels_first=lay not in ("NHWC", "NTHWC"),
        clip_values=(rng.lo.copy(), rng.hi.copy()) if rng.lo.ndim else (float(rng.lo), float(rng.hi)),
        preprocessing=None,
        device_type=device_type or ("gpu" if device.startswith("cuda") else "cpu"),
    )


def device_type_to_device(device_type: str | None) -> str:
    return "cuda" if device_type == "gpu" and torch.cuda.is_available() else "cpu"
