"""Flickering attack (Pony, Naeh, Mannor, CVPR 2021): one RGB offset per frame, smooth in time.

The perturbation ``delta`` has shape ``(B, 3, T, 1, 1)``: every pixel of frame ``t`` gets the same
colour offset, like a light source flickering over the scene. The attack maximizes

    min(loss(logits), kappa) - lambda * (beta_thickness * D1(delta) + beta_roughness * D2(delta))

with Adam, ``delta`` clipped to ``[-eps, eps]``, where ``D1`` (thickness) is the mean squared offset
and ``D2`` (roughness) the mean squared first plus second temporal derivatives; derivatives are
cyclic when ``cyclic`` (a flicker played in a loop), as in the paper. With the default margin loss
and ``kappa``, optimization stops pushing once a clip is misclassified by ``kappa`` and the penalties
then shrink the flicker; the last successful iterate is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..functional.random import GeneratorLike
from ..threat import ThreatModel, make_threat
from .base import AttackResult, Counter, register
from .loop import Ascent, until_success
from .lp import check_fields, final_result
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


@dataclass(frozen=True, kw_only=True)
class Flicker(VideoAttack):
    """One RGB offset per frame, bounded by ``eps`` in L-inf, with temporal smoothness penalties."""

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

    def __post_init__(self) -> None:
        super().__post_init__()
        make_threat("Linf", self.eps)
        check_fields(self, above_zero=("steps", "learning_rate"),
                     at_least_zero=("regularization", "beta_thickness", "beta_roughness"))  # fmt: skip

    @property
    def threat(self) -> ThreatModel:
        return make_threat("Linf", self.eps)

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        return self.regularization * (
            self.beta_thickness * thickness(delta) + self.beta_roughness * roughness(delta, self.cyclic)
        )

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        target = self.targets(model, x, y, target, generator, counter)
        b, c, t = x.shape[:3]
        delta = torch.zeros(b, c, t, 1, 1, dtype=x.dtype, device=x.device)
        if self.eps == 0:
            return final_result(model, x.clone(), y, target, counter, artifacts=self._artifacts(delta))
        loss = self.objective(y, target)
        kappa = self.kappa if math.isfinite(self.kappa) else None
        adam, threat = Adam(self.learning_rate), self.threat

        def objective(logits: torch.Tensor) -> torch.Tensor:
            value = loss(logits)
            return value.clamp(max=kappa) if kappa is not None else value

        def compose(d: torch.Tensor) -> torch.Tensor:
            return (x + d).clamp(0, 1)

        def update(d: torch.Tensor, g: torch.Tensor, _: int) -> torch.Tensor:
            return threat.project(d + adam.step(g))

        def regularize(gain: torch.Tensor, d: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return gain - self.penalty(d)

        ascent = Ascent(objective=objective, update=update, compose=compose, regularize=regularize)
        x_adv, _, _ = until_success(model, delta, ascent, y, target, counter, steps=self.steps, last=True)
        result = final_result(model, x_adv, y, target, counter)
        # the applied offsets (after the [0, 1] box), averaged over each frame's pixels
        result.artifacts = self._artifacts((x_adv - x).mean(dim=(3, 4), keepdim=True))
        result.metrics["flicker_roughness"] = roughness(
            (x_adv - x).mean(dim=(3, 4), keepdim=True), self.cyclic
        )
        return result

    @staticmethod
    def _artifacts(delta: torch.Tensor) -> dict:
        return {"flicker_offsets": delta[:, :, :, 0, 0].transpose(1, 2).detach().cpu().tolist()}


register("flicker")(Flicker)
