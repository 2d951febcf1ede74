"""The bases of the gradient attacks: ``LossAttack`` (a per-sample loss, untargeted or targeted) and
``LpAttack`` (that, inside an Lp ball: ``norm`` / ``eps`` and the threat they name, held once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..functional.losses import get_loss
from ..functional.random import GeneratorLike
from ..threat import ThreatModel, make_threat
from .base import Attack, Counter, resolve_targets

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class LossAttack(Attack):
    """An attack that ascends ``loss`` ('ce', 'dlr', 'cw', ...), per sample. ``targeted`` uses the
    ``target`` passed at call time, else picks targets by ``target_mode`` ('random', 'least-likely' or a
    class index)."""

    loss: str = "ce"
    targeted: bool = False
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        get_loss(self.loss)

    def objective(self, y: torch.Tensor, target: torch.Tensor | None) -> Objective:
        """Per-row loss that rises as the attack succeeds. Logits of several rows per sample (EOT
        draws, sample-major: row ``j * B + i`` is draw ``j`` of sample ``i``) get the labels repeated."""
        fn = get_loss(self.loss)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[0] == y.shape[0]:
                return fn(logits, y, target)
            reps = logits.shape[0] // y.shape[0]
            return fn(logits, y.repeat(reps), target.repeat(reps) if target is not None else None)

        return objective

    def targets(
        self,
        model: Callable,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: GeneratorLike,
        counter: Counter,
    ) -> torch.Tensor | None:
        """The classes to aim for (None when untargeted); see ``resolve_targets``."""
        return resolve_targets(
            model, x, y, target, targeted=self.targeted, mode=self.target_mode, generator=generator,
            counter=counter,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class LpAttack(LossAttack):
    """A ``LossAttack`` inside the ``norm`` ball ('Linf' or 'L2') of radius ``eps``."""

    norm: str = "Linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        make_threat(self.norm, self.eps)
        super().__post_init__()

    @property
    def threat(self) -> ThreatModel:
        return make_threat(self.norm, self.eps)
