"""What the universal attacks share: one perturbation for all inputs, trained on a training split.

A universal attack (the adversarial patch, the video patch, universal framing, universal flicker) is
``fit`` on a training split once and then applied unchanged to every held-out input. ``fit`` leaves the
model as it found it, drops the training inputs of a targeted attack's own class, keeps the first
``train_samples``, and returns a copy of the attack holding what it trained and what training cost:
``training_cost`` (a :class:`TrainingCost`: optimization steps, batched forward / backward passes,
per-sample queries and wall-clock seconds). The evaluator adds that cost to the attack's row and to
the report's timing section, so that a universal attack's time is not just the time of pasting it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..functional.placement import ObjectGeometry
from ..functional.random import GeneratorLike, shared
from ..functional.video import check_video
from ..models.state import preserved
from ..validate import check_labels
from .base import RESULT, Counter, accepts, positive_ints
from .loop import Ascent, Final, ascend, minibatches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingCost:
    """What fitting a universal attack cost: ``steps`` optimization steps, ``forward`` / ``backward``
    batched passes, ``queries`` per-sample forward evaluations, ``seconds`` of wall-clock time."""

    steps: int
    forward: int
    backward: int
    queries: int
    seconds: float

    def counters(self) -> dict[str, int]:
        """The counters in the form attack results use, plus ``training_steps``."""
        return {
            "forward": self.forward,
            "backward": self.backward,
            "queries": self.queries,
            "training_steps": self.steps,
        }


def is_universal(attack: object) -> bool:
    """Whether ``attack`` is fitted on a training split before it is applied: it has ``fit`` and is not
    configured per input (``universal: false``, as framing, flicker and eyeglass frames are by default)."""
    return callable(getattr(attack, "fit", None)) and bool(getattr(attack, "universal", True))


def _synchronize(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


@dataclass(frozen=True, kw_only=True)
class Universal:
    """Base of the universal attacks. Subclasses implement ``check_training`` and ``_optimize`` and
    name the field that holds the trained perturbation in ``trained_field``."""

    surface: ClassVar[str] = "image"
    trained_field: ClassVar[str] = "patch"

    batch_size: int = 16
    train_samples: int = 256
    training_cost: TrainingCost | None = field(
        default=None, repr=False, compare=False, metadata={RESULT: True}
    )

    def universal_target(self) -> int | None:
        """The class a targeted universal attack pushes every input to (None: untargeted)."""
        return None

    def check_training(self, x_train: torch.Tensor) -> None:
        """ConfigError unless ``x_train`` is a batch of what the attack attacks."""
        raise NotImplementedError

    def training_steps(self) -> int:
        """The optimization steps ``_optimize`` takes (recorded in ``training_cost``)."""
        raise NotImplementedError

    def _optimize(
        self, model, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None, counter: Counter
    ) -> torch.Tensor:
        raise NotImplementedError

    def fit(
        self,
        model,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        *,
        generator: GeneratorLike = None,
        objects: ObjectGeometry | None = None,
    ):
        """Optimize the universal perturbation on a training split; returns this attack holding it and
        its ``training_cost``. ``objects``: where the object lies in each training image, for attacks
        placed on it (the patch's ``placement: object``); the others ignore it."""
        self.check_training(x_train)
        check_labels(y_train, x_train.shape[0], "y_train")
        keep = torch.arange(x_train.shape[0], device=x_train.device)
        target = self.universal_target()
        if target is not None:
            keep = keep[y_train != target]
        if keep.numel() == 0:
            what = "clip" if self.surface == "frame" else self.surface
            raise ConfigError(f"the training split holds no {what} outside the target class")
        keep = keep[: self.train_samples]
        x_train, y_train = x_train[keep], y_train[keep]
        placed = {}
        if objects is not None and accepts(self._optimize, "objects"):
            placed["objects"] = objects.select(keep.cpu())
        counter = Counter()
        _synchronize(x_train)
        start = time.perf_counter()
        with preserved(model):
            trained = self._optimize(model, x_train, y_train, shared(generator), counter, **placed)
        _synchronize(x_train)
        cost = TrainingCost(self.training_steps(), counter.forward, counter.backward, counter.queries,
                            time.perf_counter() - start)  # fmt: skip
        return replace(self, **{self.trained_field: trained, "training_cost": cost})


@dataclass(frozen=True, kw_only=True)
class UniversalVideo(Universal):
    """A video attack that is per-clip by default and universal with ``universal: true``: one
    perturbation trained with Adam for ``train_steps`` minibatch steps of ``batch_size`` clips over a
    training split, then applied to every held-out clip (a targeted one needs an integer
    ``target_mode``, the class every clip is pushed to)."""

    surface: ClassVar[str] = "frame"

    universal: bool = False
    train_steps: int = 200

    def check_universal(self) -> None:
        positive_ints(self, "train_steps", "batch_size", "train_samples")
        if self.universal and self.targeted and self.universal_target() is None:  # type: ignore[attr-defined]
            raise ConfigError(
                f"a targeted universal {self.name} needs target_mode set to the class index every clip "  # type: ignore[attr-defined]
                f"is pushed to, got {self.target_mode!r}"  # type: ignore[attr-defined]
            )

    def universal_target(self) -> int | None:
        mode = self.target_mode  # type: ignore[attr-defined]
        if self.targeted and isinstance(mode, int) and not isinstance(mode, bool):  # type: ignore[attr-defined]
            return mode
        return None

    def check_training(self, x_train: torch.Tensor) -> None:
        check_video(x_train, "x_train")

    def fit(self, model, x_train: torch.Tensor, y_train: torch.Tensor, *, generator: GeneratorLike = None):
        """Train the universal perturbation (``Universal.fit``); a per-clip attack returns itself."""
        return super().fit(model, x_train, y_train, generator=generator) if self.universal else self

    def training_steps(self) -> int:
        return self.train_steps

    def universal_targets(self, y: torch.Tensor) -> torch.Tensor | None:
        target = self.universal_target()
        return None if target is None else torch.full_like(y, target)

    def trained(self, model, x: torch.Tensor, y: torch.Tensor, generator: GeneratorLike, counter: Counter):
        """The trained perturbation, fitting it on this batch (with a warning) when ``fit`` was not
        called; its training is then counted in ``counter``."""
        held = getattr(self, self.trained_field)
        if held is not None:
            return held.to(x.device, x.dtype)
        log.warning("%s: no trained universal perturbation (call fit on a training split first); "  # type: ignore[attr-defined]
                    "fitting on this batch", self.name)  # fmt: skip
        with preserved(model):
            return self._optimize(model, x, y, shared(generator), counter)

    def train_shared(
        self, model, param: torch.Tensor, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None,
        counter: Counter, *, compose, update, objective=None, regularize=None,
    ) -> torch.Tensor:  # fmt: skip
        """Minibatch ascent of one shared parameter: ``compose(xb, param, g)`` renders a minibatch,
        ``objective(yb)`` (default: the attack's own, towards the universal target) its per-clip gain,
        whose mean is ascended."""
        batches = minibatches(x.shape[0], self.batch_size, g, x.device)
        make = objective or (lambda yb: self.objective(yb, self.universal_targets(yb)))  # type: ignore[attr-defined]

        def minibatch(_: int) -> Ascent:
            idx = next(batches)
            xb, gain = x[idx], make(y[idx])
            return Ascent(compose=lambda p: compose(xb, p, g), objective=lambda logits: gain(logits).mean(),
                          update=update, regularize=regularize)  # fmt: skip

        return ascend(model, param, minibatch, Final(), steps=self.train_steps, counter=counter)
