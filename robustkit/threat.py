"""Threat models own the geometry: random init, steepest-ascent direction, projection, norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .functional.projection import flat_norm, project_l2, project_linf, random_l2, random_linf, unit_l2
from .functional.random import GeneratorLike
from .registry import suggest


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around the input, intersected with the [0, 1] box."""

    eps: float
    p: float = float("inf")
    name: str = "Linf"

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent direction of unit norm (dual norm) for this ball."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def clip(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Project onto the ball, then keep x + delta inside [0, 1]."""
        delta = self.project(delta)
        return (x + delta).clamp(0.0, 1.0) - x

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return flat_norm(delta, self.p)

    def within(self, delta: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
        return self.norm(delta) <= self.eps * (1 + tol) + tol


@dataclass(frozen=True)
class Linf(ThreatModel):
    p: float = float("inf")
    name: str = "Linf"

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        return random_linf(x, self.eps, generator)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return project_linf(delta, self.eps)


@dataclass(frozen=True)
class L2(ThreatModel):
    p: float = 2.0
    name: str = "L2"

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        return random_l2(x, self.eps, generator)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return unit_l2(grad)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return project_l2(delta, self.eps)


THREATS: dict[str, type[ThreatModel]] = {"Linf": Linf, "L2": L2}
_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "2": "L2"}


def make_threat(norm: str, eps: float) -> ThreatModel:
    key = _ALIASES.get(str(norm).lower(), str(norm))
    if key not in THREATS:
        raise ConfigError(f"unknown norm '{norm}'{suggest(str(norm), list(THREATS))}; use 'Linf' or 'L2'")
    if not isinstance(eps, int | float) or eps < 0:
        raise ConfigError(f"eps must be a number >= 0, got {eps!r}")
    if key == "Linf" and eps > 1:
        raise ConfigError(
            f"eps={eps} is larger than 1, the whole [0, 1] pixel range; did you mean {eps}/255?"
        )
    return THREATS[key](eps=float(eps))
