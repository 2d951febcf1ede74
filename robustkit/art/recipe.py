"""ART's own attacks inside robustkit recipes: ``attack: art.ProjectedGradientDescent``.

```yaml
attacks:
  - attack: art.ProjectedGradientDescent    # any ART evasion attack class
    name: art-pgd
    eps: [2/255, 8/255]                      # the ART constructor's own parameters
    eps_step: 1/255
    max_iter: 10
```

:func:`recipe_attack` builds an :class:`ARTAttack`, a robustkit ``Attack`` that, per batch, wraps the
model in a ``PyTorchClassifier`` (``clip_values=(0, 1)``, so ``eps`` is in ``[0, 1]`` units as in
robustkit) and runs ART's ``generate``. Parameters are checked when the recipe loads, by building the
ART attack on a small stand-in classifier. ART draws its randomness from numpy's and torch's global
generators; they are seeded from the per-sample generators for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..attacks.base import Attack, AttackResult, Counter, choose_targets, is_success
from ..errors import ConfigError
from ..functional.random import GeneratorLike, shared
from ..registry import suggest
from ..threat import ThreatModel, make_threat
from ..training.seeding import fixed_seed

_PATCH_HINT = (
    "ART's patch attacks return a patch, not adversarial examples; in a recipe use robustkit's `patch`"
)


@functools.cache
def art_attack_names() -> dict[str, type]:
    """Every ``EvasionAttack`` class that ``art.attacks.evasion`` exports, by name."""
    import art.attacks.evasion as evasion
    from art.attacks.attack import EvasionAttack

    return {
        name: obj
        for name in dir(evasion)
        if isinstance(obj := getattr(evasion, name), type) and issubclass(obj, EvasionAttack)
    }


def resolve_art_class(name: str) -> type:
    classes = art_attack_names()
    if name not in classes:
        raise ConfigError(
            f"unknown ART attack 'art.{name}'{suggest(name, list(classes))}. ART evasion attacks: {', '.join(classes)}."
        )
    return classes[name]


def _signature(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    params.pop("estimator", None)
    params.pop("classifier", None)
    open_ = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}, open_


class _Counting(nn.Module):
    """Counts forward passes, per-sample queries and backward passes through a model."""

    def __init__(self, model: nn.Module, counter: Counter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.forward += 1
        self.counter.queries += x.shape[0]
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._backward)
        return out

    def _backward(self, grad: torch.Tensor) -> None:
        self.counter.backward += 1


def classifier_for(
    model: nn.Module, input_shape: tuple[int, ...], nb_classes: int, device: torch.device
) -> Any:
    """A ``PyTorchClassifier`` around a robustkit model: input in [0, 1], channels first."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape), nb_classes=int(nb_classes),
        clip_values=(0.0, 1.0), preprocessing=None, device_type="gpu" if device.type == "cuda" else "cpu",
    )  # fmt: skip


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's global generators for ART inside the block; restore them all after
    (the CUDA generators only when CUDA is in use: seeding them otherwise would be deferred, and leak)."""
    state = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with fixed_seed(seed), torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
        if cuda:
            torch.cuda.manual_seed_all(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


@dataclass(frozen=True, kw_only=True)
class ARTAttack(Attack):
    """An ART evasion attack run as a robustkit attack; ``art_params`` are its constructor's arguments.

    Targeted ART attacks get the ``target`` passed at call time, else targets chosen by ``target_mode``.
    """

    name: ClassVar[str] = "art"

    art_class: str
    art_params: dict[str, Any] = field(default_factory=dict, hash=False)
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        cls = resolve_art_class(self.art_class)
        if hasattr(cls, "apply_patch"):
            raise ConfigError(f"art.{self.art_class}: {_PATCH_HINT}")
        params, open_ = _signature(cls)
        if not open_:
            for key in self.art_params:
                if key not in params:
                    raise ConfigError(
                        f"art.{self.art_class}: unknown parameter '{key}'{suggest(key, list(params))}. "
                        f"Parameters: {', '.join(params)}."
                    )
        self._build(_stand_in(), 8)  # ART's own checks, before anything runs

    # ------------------------------------------------------------------ recipe-facing views
    def params(self) -> dict[str, Any]:
        """The recipe keys (ART's parameters), so a resolved recipe loads again."""
        return dict(self.art_params)

    def _value(self, key: str) -> Any:
        if key in self.art_params:
            return self.art_params[key]
        p = _signature(resolve_art_class(self.art_class))[0].get(key)
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    @property
    def eps(self) -> float | None:
        eps = self._value("eps")
        return float(eps) if isinstance(eps, int | float) and not isinstance(eps, bool) else None

    @property
    def norm(self) -> str | None:
        norm = self._value("norm")
        if norm in (np.inf, "inf", "Linf", "linf"):
            return "Linf"
        if norm in (2, 2.0, "2", "L2", "l2"):
            return "L2"
        return None

    @property
    def threat(self) -> ThreatModel | None:
        """The Lp ball ART's attack keeps to (checked by the runner), when it has one."""
        if (
            self.eps is None
            or self.norm is None
            or not 0 <= self.eps <= (1 if self.norm == "Linf" else float("inf"))
        ):
            return None
        return make_threat(self.norm, self.eps)

    @property
    def targeted(self) -> bool:
        return bool(self._value("targeted"))

    # ------------------------------------------------------------------ running
    def _build(self, estimator: Any, batch: int) -> Any:
        cls = resolve_art_class(self.art_class)
        params, _ = _signature(cls)
        kwargs = dict(self.art_params)
        if "verbose" in params and "verbose" not in kwargs:
            kwargs["verbose"] = False
        if "batch_size" in params and "batch_size" not in kwargs:
            kwargs["batch_size"] = batch
        try:
            return cls(estimator, **kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # ART's own parameter checks; EstimatorError is a TypeError
            raise ConfigError(f"art.{self.art_class}: {exc}") from exc

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        net = _Counting(model, counter)
        with torch.no_grad():
            clean = net(x)
        estimator = classifier_for(net, tuple(x.shape[1:]), clean.shape[1], x.device)
        art_attack = self._build(estimator, x.shape[0])
        if self.targeted and target is None:
            target = choose_targets(clean, y, self.target_mode, generator)
        if not self.targeted:
            target = None
        labels = (target if target is not None else y).cpu().numpy()
        g = shared(generator)
        seed = (
            int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            if g is not None
            else int(np.random.randint(2**31 - 1))
        )
        with seeded(seed):
            adv = art_attack.generate(x.detach().cpu().numpy().astype(np.float32), y=labels)
        if not isinstance(adv, np.ndarray) or adv.shape != tuple(x.shape):
            raise ConfigError(
                f"art.{self.art_class}.generate returned {type(adv).__name__}, not adversarial examples"
            )
        x_adv = torch.from_numpy(adv).to(x.device, x.dtype).clamp(0, 1)
        with torch.no_grad():
            logits = net(x_adv)
        return AttackResult(
            x_adv=x_adv, success=is_success(logits, y, target), logits=logits, counters=counter.as_dict()
        )


@functools.cache
def _stand_in() -> Any:
    """A small classifier to check ART parameters against when a recipe loads."""
    with fixed_seed(0):
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    return classifier_for(model, (3, 8, 8), 10, torch.device("cpu"))


def recipe_attack(class_name: str, **params: Any) -> ARTAttack:
    """The robustkit attack for a recipe entry ``attack: art.<class_name>`` with ART's parameters."""
    target_mode = params.pop("target_mode", "random")
    return ARTAttack(art_class=class_name, art_params=params, target_mode=target_mode)
