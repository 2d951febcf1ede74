"""robustkit attacks as ART ``EvasionAttack`` classes.

Every registered robustkit attack gets a subclass of :class:`RobustkitEvasionAttack` (see
``factory.py``). It takes an ART ``PyTorchClassifier`` and follows ART's conventions:

- ``attack_params`` lists the attack's recipe parameters (the fields of its dataclass) plus
  ``batch_size``, ``seed``, ``layout`` and ``verbose``; ``set_params`` rejects unknown names and
  invalid values with ``ValueError`` (and, unlike ART, leaves the attack unchanged when it does).
- Budgets (``eps``, ``step_size``) are in the estimator's units: with ``clip_values=(0, 255)``,
  ``eps=8`` is robustkit's ``8/255``.
- ``generate(x, y=None, mask=None)``: ``x`` in the estimator's layout and range; ``y`` true labels
  (indices or one-hot) for untargeted attacks, target labels for targeted ones; ``y=None`` attacks
  the model's predictions (targeted attacks then pick their own targets). ``mask`` (broadcastable to
  ``x``): features where it is zero are returned unchanged.

The attack loop runs in torch on the estimator's own model (``from_estimator``); numpy appears only
on the way in and out. ``last_result`` keeps robustkit's per-sample success, counters and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.pytorch import PyTorchClassifier
from torch import nn
from tqdm.auto import tqdm

from ..attacks import Attack, AttackResult, create_attack
from ..errors import ConfigError
from ..functional.random import sample_generators
from ..registry import suggest
from .boundary import LAYOUTS, ValueRange, detect_layout, from_unit, labels_from, to_robustkit, to_unit
from .estimator import EstimatorModel, from_estimator

log = logging.getLogger(__name__)

# Parameters measured in input units: converted between the estimator's range and [0, 1].
SCALED = ("eps", "step_size")
# ART-side parameters every generated class has (unless the attack has a field of that name).
EXTRAS: dict[str, Any] = {"batch_size": 128, "seed": None, "layout": None, "verbose": True}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode inside the block (as ART's ``predict`` / ``loss_gradient``), restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class _Gate(torch.autograd.Function):
    """Identity forward; the backward pass keeps the gradient only where the mask is set."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class GradientGate(nn.Module):
    """``model`` seen through a perturbation mask (one sample's shape): gradients reach only masked-in
    features, so gradient steps never move the others."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask.float()[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_Gate.apply(x, self.mask.to(x.dtype)))


def mask_groups(
    mask: Any, x_shape: tuple[int, ...], layout: str, device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ART's ``mask`` (broadcastable to ``x``) as (one-sample bool mask in robustkit layout, sample indices)."""
    arr = np.asarray(mask)
    try:
        full = np.broadcast_to(arr, x_shape)
    except ValueError as exc:
        raise ConfigError(f"mask of shape {arr.shape} does not broadcast to x of shape {x_shape}") from exc
    n = x_shape[0]
    per_sample = arr.ndim == len(x_shape) and arr.shape[0] == n and n > 1
    t = to_robustkit(torch.from_numpy(np.ascontiguousarray(full != 0)), layout).to(device)
    if not per_sample:
        return [(t[0], torch.arange(n, device=device))]
    uniq, inverse = torch.unique(t.reshape(n, -1), dim=0, return_inverse=True)
    return [(uniq[k].view(t.shape[1:]), (inverse == k).nonzero()[:, 0]) for k in range(uniq.shape[0])]


def attack_fields(factory: Any) -> dict[str, Any]:
    """Configuration fields of an attack dataclass and their defaults (fitted state such as a trained
    patch, marked ``compare=False``, is not configuration)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(factory):
        if not f.init or not f.compare:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


class RobustkitEvasionAttack(EvasionAttack):
    """Base of the generated classes; ``key`` is the robustkit registry key they run."""

    attack_params: ClassVar[list[str]] = list(EvasionAttack.attack_params)
    _estimator_requirements = (PyTorchClassifier,)
    key: ClassVar[str] = ""
    fields: ClassVar[dict[str, Any]] = {}

    def __init__(self, estimator: PyTorchClassifier, **params: Any) -> None:
        super().__init__(estimator=estimator)
        self._check_names(params)
        self._range = ValueRange.of(estimator.clip_values)
        self._layout = detect_layout(estimator.input_shape, estimator.channels_first, params.get("layout"))
        for name, value in {**self._defaults(), **params}.items():
            setattr(self, name, value)
        self._explicit = set(params)
        self.last_result: AttackResult | None = None
        self._check_params()

    # ------------------------------------------------------------------ parameters
    def _defaults(self) -> dict[str, Any]:
        values = {**{k: v for k, v in EXTRAS.items() if k not in self.fields}, **self.fields}
        for name in SCALED:
            if isinstance(values.get(name), int | float) and not self._range.unit:
                values[name] = values[name] * self._range.width(type(self).__name__)
        return values

    def _check_names(self, params: dict[str, Any]) -> None:
        for key in params:
            if key not in self.attack_params:
                raise ConfigError(
                    f'The attribute "{key}" cannot be set for this attack ({type(self).__name__})'
                    f"{suggest(key, self.attack_params)}. Parameters: {', '.join(self.attack_params)}."
                )

    def set_params(self, **kwargs: Any) -> None:
        """Set parameters after checking them; on a ``ValueError`` nothing changes."""
        self._check_names(kwargs)
        old = {k: getattr(self, k) for k in kwargs}
        for k, v in kwargs.items():
            setattr(self, k, v)
        try:
            self._check_params()
        except Exception:
            for k, v in old.items():
                setattr(self, k, v)
            self._check_params()
            raise
        self._explicit |= set(kwargs)

    def _check_params(self) -> None:
        super()._check_params()
        if "batch_size" not in self.fields:
            bs = self.batch_size
            if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
                raise ConfigError(f"batch_size must be a positive integer, got {bs!r}")
        if (
            "seed" not in self.fields
            and self.seed is not None
            and (not isinstance(self.seed, int) or self.seed < 0)
        ):
            raise ConfigError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if "verbose" not in self.fields and not isinstance(self.verbose, bool):
            raise ConfigError(f"verbose must be a bool, got {self.verbose!r}")
        if "layout" not in self.fields:
            if self.layout is not None and self.layout not in LAYOUTS:
                raise ConfigError(f"layout must be None or one of {', '.join(LAYOUTS)}, got {self.layout!r}")
            est = self.estimator
            self._layout = detect_layout(est.input_shape, est.channels_first, self.layout)
        self.robustkit_attack()

    def robustkit_attack(self) -> Attack:
        """The robustkit attack these parameters describe, budgets converted to [0, 1] units."""
        params = {name: getattr(self, name) for name in self.fields}
        for name in SCALED:
            if (
                isinstance(params.get(name), int | float)
                and not isinstance(params[name], bool)
                and not self._range.unit
            ):
                params[name] = params[name] / self._range.width(type(self).__name__)
        try:
            return create_attack(self.key, **params)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{type(self).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ helpers
    @property
    def batch(self) -> int:
        """Samples per attack call (an attack's own ``batch_size`` field is its training minibatch)."""
        return int(self.batch_size) if "batch_size" not in self.fields else 128

    def _seed(self) -> int:
        seed = getattr(self, "seed", None) if "seed" not in self.fields else None
        # like ART's attacks, unseeded runs follow numpy's global generator (np.random.seed repeats them)
        return int(seed) if seed is not None else int(np.random.randint(0, 2**31 - 1))

    def _model(self) -> EstimatorModel:
        return from_estimator(self.estimator, layout=self._layout)

    def _inputs(self, x: Any) -> torch.Tensor:
        xt = to_unit(x, self._range, self._layout, self.estimator.device)
        if tuple(xt.shape[1:]) != tuple(self._model_shape()):
            raise ConfigError(
                f"x has samples of shape {np.shape(x)[1:]}, the estimator expects {tuple(self.estimator.input_shape)}"
            )
        return xt

    def _model_shape(self) -> tuple[int, ...]:
        from .boundary import shape_to_robustkit

        return shape_to_robustkit(self.estimator.input_shape, self._layout)

    def _check_kind(self, attack: Attack, xt: torch.Tensor) -> None:
        kind = getattr(attack, "input_kind", None)
        want = {"image": 4, "video": 5}.get(kind or "")
        if want and xt.ndim != want:
            raise ConfigError(f"{type(self).__name__} attacks {kind} input; the estimator's samples have shape "
                              f"{tuple(self.estimator.input_shape)}")  # fmt: skip

    def _predict(self, model: nn.Module, xt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [model(xt[i : i + self.batch]).argmax(1) for i in range(0, xt.shape[0], self.batch)]
            )

    def _labels(
        self, attack: Attack, model: nn.Module, xt: torch.Tensor, y: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(true labels, targets): ART's ``y`` is the target for targeted attacks, else the truth."""
        n = xt.shape[0]
        given = None
        if y is not None:
            given = torch.from_numpy(labels_from(y, n, self.estimator.nb_classes)).to(xt.device)
        if getattr(attack, "targeted", False) and given is not None:
            return self._predict(model, xt), given
        return (given if given is not None else self._predict(model, xt)), None

    def _start(self, x: np.ndarray, unused: dict[str, Any]) -> tuple[Attack, EstimatorModel, torch.Tensor]:
        """The attack, the model and ``x`` as a tensor, after refusing arguments ``generate`` does not take."""
        if unused:
            raise ConfigError(f"{type(self).__name__}.generate got unexpected arguments: {', '.join(unused)}")
        attack = self.robustkit_attack()
        xt = self._inputs(x)
        self._check_kind(attack, xt)
        return attack, self._model(), xt

    # ------------------------------------------------------------------ ART API
    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """Adversarial examples for ``x`` (estimator layout and range), as a float32 array like ``x``."""
        mask = kwargs.pop("mask", None)
        attack, model, xt = self._start(x, kwargs)
        n = xt.shape[0]
        seed = self._seed()
        gens = sample_generators(seed, range(n))
        with eval_mode(model):
            labels, target = self._labels(attack, model, xt, y)
            if callable(getattr(attack, "fit", None)):
                g = torch.Generator().manual_seed(seed)
                if "train_samples" in self.fields and "train_samples" not in self._explicit:
                    attack = attack.replace(train_samples=n)
                attack = attack.fit(model, xt, labels, generator=g)
            groups = [(None, torch.arange(n, device=xt.device))]
            if mask is not None:
                groups = mask_groups(mask, tuple(np.shape(x)), self._layout, xt.device)
            result = self._run(attack, model, xt, labels, target, gens, groups)
        self.last_result = result
        return from_unit(result.x_adv, self._range, self._layout, np.asarray(x))

    def _run(self, attack, model, xt, labels, target, gens, groups) -> AttackResult:
        x_adv = xt.clone()
        success = torch.zeros(xt.shape[0], dtype=torch.bool, device=xt.device)
        counters: dict[str, int] = {}
        metrics: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        chunks = [
            (m, idx[i : i + self.batch]) for m, idx in groups for i in range(0, idx.numel(), self.batch)
        ]
        for m, idx in tqdm(
            chunks, desc=type(self).__name__, disable=not getattr(self, "verbose", False), leave=False
        ):
            net = model if m is None else GradientGate(model, m)
            res = attack(net, xt[idx], labels[idx], target=None if target is None else target[idx],
                         generator=[gens[i] for i in idx.tolist()])  # fmt: skip
            adv = res.x_adv if m is None else torch.where(m, res.x_adv, xt[idx])
            x_adv[idx] = adv
            success[idx] = res.success
            for k, v in res.counters.items():
                counters[k] = counters.get(k, 0) + int(v)
            for k, v in res.metrics.items():
                if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == idx.numel():
                    metrics.setdefault(k, []).append((idx, v.detach()))
        if groups[0][0] is not None:  # masked: success of what is returned
            with torch.no_grad():
                pred = torch.cat(
                    [model(x_adv[i : i + self.batch]).argmax(1) for i in range(0, xt.shape[0], self.batch)]
                )
            if target is not None:
                success = pred == target
            else:  # targets the attack chose itself: a claimed success that still misclassifies
                success = (
                    (success & (pred != labels)) if getattr(attack, "targeted", False) else pred != labels
                )
        merged = {}
        for k, parts in metrics.items():
            if sum(p[0].numel() for p in parts) == xt.shape[0]:
                out = torch.empty(
                    (xt.shape[0], *parts[0][1].shape[1:]), dtype=parts[0][1].dtype, device=xt.device
                )
                for idx, v in parts:
                    out[idx] = v.to(xt.device)
                merged[k] = out
        return AttackResult(x_adv=x_adv, success=success, counters=counters, metrics=merged)
