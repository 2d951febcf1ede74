"""Flickering attack (Pony, Naeh, Mannor, CVPR 2021): one RGB offset per frame, smooth in time.

The perturbation ``delta`` has shape ``(B, 3, T, 1, 1)``: every pixel of frame ``t`` gets the same
colour offset, like a light source flickering over the scene. The attack maximizes

    min(loss(logits), kappa) - lambda * (beta_thickness * D1(delta) + beta_roughness * D2(delta))

with Adam, ``delta`` clipped to ``[-eps, eps]``, where ``D1`` (thickness) is the mean squared offset
and ``D2`` (roughness) the mean squared first plus second temporal derivatives; derivatives are
cyclic when ``cyclic`` (a flicker played in a loop), as in the paper. With the default margin loss
and ``kappa``, optimization stops pushing once a clip is misclassified by ``kappa`` and the penalties
then shrink the flicker; the last successful iterate is kept.

With ``universal: true`` one flicker ``(1, 3, T, 1, 1)`` serves every clip (Pony et al.'s universal
attack): it is trained with Adam over a training split (``fit``, ``train_steps`` minibatch steps) and
played on every held-out clip unchanged. A flicker played in the real world cannot be synchronized with
the start of a clip, so with ``random_shift`` (the default) each clip sees it cyclically shifted by a
random number of frames, in training and in evaluation. The universal objective over a few dozen
offsets can have several maxima (on the built-in video model a white and a coloured constant tint:
held-out error 4.5 % and 2 %, clean 2.5 %), so with ``restarts`` > 1 it is trained that many times, the
first from zero and the others from random flickers in the bound, and the one with the highest
penalized objective on the training split (every clip at one shared draw of shifts) is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..functional.random import GeneratorLike, uniform
from ..threat import ThreatModel, make_threat
from .base import RESULT, AttackResult, Counter, forward, positive_ints, register
from .loop import Ascent, until_success
from .lp import check_fields, final_result
from .universal import UniversalVideo
from .video_base import Adam, VideoAttack


def temporal_derivatives(delta: torch.Tensor, cyclic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second differences of ``delta`` along time (dim 2)."""
    if cyclic:
        first = delta - delta.roll(1, dims=2)
        second = delta.roll(-1, dims=2) - 2 * delta + delta.roll(1, dims=2)
        return first, second
    first = delta[:, :, 1:] - delta[:, :, :-1]
    return first, first[:, :, 1:] - first[:, :, :-1]


def thickness(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared offset, ``D1`` of the paper."""
    return delta.pow(2).flatten(1).mean(1)


def roughness(delta: torch.Tensor, cyclic: bool = True) -> torch.Tensor:
    """Per-sample mean squared first and second temporal derivatives, ``D2`` of the paper."""
    first, second = temporal_derivatives(delta, cyclic)
    total = first.pow(2).flatten(1).mean(1)
    if second.shape[2]:
        total = total + second.pow(2).flatten(1).mean(1)
    return total


def cyclic_shift(delta: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """One flicker ``(1, C, T, 1, 1)`` played from frame ``shift[i]`` on for clip ``i``: (B, C, T, 1, 1)."""
    t = delta.shape[2]
    index = (torch.arange(t, device=delta.device)[None] + shift[:, None]) % t
    return delta[0][:, index].transpose(0, 1)


@dataclass(frozen=True, kw_only=True)
class Flicker(VideoAttack, UniversalVideo):
    """One RGB offset per frame, bounded by ``eps`` in L-inf, with temporal smoothness penalties; per
    clip, or one for all clips with ``universal`` (the trained ``flicker``, a result)."""

    trained_field: ClassVar[str] = "flicker"

    loss: str = "cw"
    eps: float = 0.2
    """L-inf bound of each frame's RGB offset."""
    steps: int = 100
    """Adam steps."""
    learning_rate: float = 0.01
    """Adam's learning rate."""
    kappa: float = 1.0
    """Confidence margin of the CW loss."""
    regularization: float = 1.0
    """Weight of the smoothness terms against the adversarial loss."""
    beta_thickness: float = 1.0
    """Weight of the mean squared offset (the paper's D1)."""
    beta_roughness: float = 1.0
    """Weight of the squared first and second temporal derivatives (the paper's D2)."""
    cyclic: bool = True
    """Take temporal derivatives around the clip's end (a looping flicker)."""
    random_shift: bool = True
    """Universal: play the flicker from a random frame on each clip (it cannot be synchronized)."""
    restarts: int = 1
    """Universal: trainings (the first from zero, the others from random flickers); the best on the
    training split is kept."""
    flicker: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={RESULT: True})

    def __post_init__(self) -> None:
        super().__post_init__()
        make_threat("Linf", self.eps)
        check_fields(self, above_zero=("steps", "learning_rate"),
                     at_least_zero=("regularization", "beta_thickness", "beta_roughness"))  # fmt: skip
        self.check_universal()
        positive_ints(self, "restarts")

    def training_steps(self) -> int:
        return self.train_steps * self.restarts

    @property
    def threat(self) -> ThreatModel:
        return make_threat("Linf", self.eps)

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        return self.regularization * (
            self.beta_thickness * thickness(delta) + self.beta_roughness * roughness(delta, self.cyclic)
        )

    def clipped(self, logits_loss):
        """The adversarial loss capped at ``kappa`` (no push beyond a margin of ``kappa``)."""
        kappa = self.kappa if math.isfinite(self.kappa) else None

        def objective(logits: torch.Tensor) -> torch.Tensor:
            value = logits_loss(logits)
            return value.clamp(max=kappa) if kappa is not None else value

        return objective

    def shifts(self, n: int, frames: int, generator: GeneratorLike, device) -> torch.Tensor:
        """Where each of ``n`` clips starts playing the universal flicker."""
        if not self.random_shift:
            return torch.zeros(n, dtype=torch.long, device=device)
        return (uniform((n,), generator, device) * frames).long().clamp_max(frames - 1)

    def _optimize(self, model, x, y, g, counter: Counter) -> torch.Tensor:
        """The universal flicker (1, C, T, 1, 1) trained on clips ``x``: the best of ``restarts``."""
        n, c, t = x.shape[:3]
        zero = torch.zeros(1, c, t, 1, 1, dtype=x.dtype, device=x.device)
        if self.eps == 0:
            return zero
        if self.restarts == 1:
            return self._train(model, zero, x, y, g, counter)
        best, best_value, shift = zero, -math.inf, self.shifts(n, t, g, x.device)
        for restart in range(self.restarts):
            start = zero if restart == 0 else (2 * uniform(zero.shape, g, x.device, x.dtype) - 1) * self.eps
            delta = self._train(model, start, x, y, g, counter)
            value = self.training_value(model, delta, x, y, shift, counter)
            if value > best_value:
                best, best_value = delta, value
        return best

    def training_value(
        self,
        model,
        delta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        shift: torch.Tensor,
        counter: Counter,
    ) -> float:
        """The penalized objective of the universal flicker ``delta`` over the training clips, clip ``i``
        playing it from frame ``shift[i]`` (forward passes in batches of ``batch_size``)."""
        total = 0.0
        for s in range(0, x.shape[0], self.batch_size):
            xb, yb = x[s : s + self.batch_size], y[s : s + self.batch_size]
            with torch.no_grad():
                logits = forward(model, (xb + cyclic_shift(delta, shift[s : s + self.batch_size])).clamp(0, 1),
                                 counter)  # fmt: skip
                total += float(self.clipped(self.objective(yb, self.universal_targets(yb)))(logits).sum())
        return total / x.shape[0] - float(self.penalty(delta).sum())

    def _train(self, model, delta: torch.Tensor, x, y, g, counter: Counter) -> torch.Tensor:
        """One training of the universal flicker from ``delta``: ``train_steps`` minibatch Adam steps."""
        t = x.shape[2]
        adam, threat = Adam(self.learning_rate), self.threat

        def compose(xb: torch.Tensor, d: torch.Tensor, gen) -> torch.Tensor:
            return (xb + cyclic_shift(d, self.shifts(xb.shape[0], t, gen, xb.device))).clamp(0, 1)

        def update(d: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            return threat.project(d + adam.step(grad))

        def regularize(gain: torch.Tensor, d: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return gain - self.penalty(d)

        def objective(yb: torch.Tensor):
            return self.clipped(self.objective(yb, self.universal_targets(yb)))

        return self.train_shared(model, delta, x, y, g, counter, compose=compose, update=update,
                                 objective=objective, regularize=regularize)  # fmt: skip

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        b, c, t = x.shape[:3]
        if self.universal:
            target = target if target is not None else self.universal_targets(y)
            flicker = self.trained(model, x, y, generator, counter)
            if flicker.shape != (1, c, t, 1, 1):
                raise ConfigError(f"the universal flicker was trained on clips of {flicker.shape[2]} frames "
                                  f"and {flicker.shape[1]} channels, these have {t} and {c}")  # fmt: skip
            x_adv = (x + cyclic_shift(flicker, self.shifts(b, t, generator, x.device))).clamp(0, 1)
            result = final_result(model, x_adv, y, target, counter)
            return self._finish(result, x, x_adv, universal=flicker)
        target = self.targets(model, x, y, target, generator, counter)
        delta = torch.zeros(b, c, t, 1, 1, dtype=x.dtype, device=x.device)
        if self.eps == 0:
            return final_result(model, x.clone(), y, target, counter, artifacts=self._artifacts(delta))
        objective = self.clipped(self.objective(y, target))
        adam, threat = Adam(self.learning_rate), self.threat

        def compose(d: torch.Tensor) -> torch.Tensor:
            return (x + d).clamp(0, 1)

        def update(d: torch.Tensor, g: torch.Tensor, _: int) -> torch.Tensor:
            return threat.project(d + adam.step(g))

        def regularize(gain: torch.Tensor, d: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return gain - self.penalty(d)

        ascent = Ascent(objective=objective, update=update, compose=compose, regularize=regularize)
        x_adv, _, _ = until_success(model, delta, ascent, y, target, counter, steps=self.steps, last=True)
        return self._finish(final_result(model, x_adv, y, target, counter), x, x_adv)

    def _finish(
        self, result: AttackResult, x: torch.Tensor, x_adv: torch.Tensor, universal=None
    ) -> AttackResult:
        # the applied offsets (after the [0, 1] box), averaged over each frame's pixels
        applied = (x_adv - x).mean(dim=(3, 4), keepdim=True)
        result.artifacts = self._artifacts(applied)
        if universal is not None:  # the flicker itself, as a (T, C) colour sequence
            result.artifacts["universal_flicker"] = universal[0, :, :, 0, 0].T.detach().cpu().tolist()
        result.metrics["flicker_roughness"] = roughness(applied, self.cyclic)
        return result

    @staticmethod
    def _artifacts(delta: torch.Tensor) -> dict:
        return {"flicker_offsets": delta[:, :, :, 0, 0].transpose(1, 2).detach().cpu().tolist()}


register("flicker")(Flicker)
