"""Threat models own the geometry: random start, steepest-ascent direction, projection, norm.

``project_(x_adv, x)`` moves an adversarial input into the threat set around ``x`` (and the [0, 1]
box) in place; ``random_start(x, generator)`` draws a starting point from it (from the per-sample
generators, so a sample's start does not depend on its batch); ``step_`` takes one projected
steepest-ascent step in place. ``Linf`` and ``L2`` are the Lp balls of the gradient attacks, ``L0``
bounds the number of changed pixels (per image, or per frame of a clip), and ``Mask`` confines the
change to a region (a patch, a sticker, the frames a video attack may touch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .functional.projection import (
    batch_view,
    flat_norm,
    project_l2,
    project_linf,
    random_l2,
    random_linf,
    unit_l2,
)
from .functional.random import GeneratorLike, uniform
from .registry import suggest


@dataclass(frozen=True)
class ThreatModel:
    """A set of allowed inputs around ``x``, intersected with the [0, 1] box (an Lp ball of radius
    ``eps`` for the Lp threats)."""

    eps: float
    p: float = float("inf")
    name: str = "Linf"

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        """A random perturbation from the set (not yet clipped to the box)."""
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent direction of unit norm (dual norm) for this set."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def clip(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Project onto the set, then keep x + delta inside [0, 1]."""
        delta = self.project(delta)
        return (x + delta).clamp(0.0, 1.0) - x

    def project_(
        self, x_adv: torch.Tensor, x: torch.Tensor, work: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x_adv`` moved into the set around ``x`` and the [0, 1] box, in place; returns ``x_adv``.
        ``work``, a tensor of ``x``'s shape, may serve as scratch memory (its content is lost)."""
        return x_adv.copy_(x + self.clip(x, x_adv - x))

    def random_start(
        self, x: torch.Tensor, generator: GeneratorLike, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A new tensor: ``x`` plus a random draw from the set (times ``mask``, where given), one
        draw per sample from its generator; not yet projected onto the box."""
        delta = self.init(x, generator)
        if mask is not None:
            delta.mul_(mask)
        return delta.add_(x)

    def step_(
        self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step: float, frozen: torch.Tensor
    ) -> None:
        """One projected steepest-ascent step of length ``step`` of ``x_adv``, in place; samples in
        ``frozen`` do not move. ``grad`` is consumed (used as scratch memory)."""
        scale = batch_view((~frozen).to(x_adv.dtype).mul_(step), x_adv)
        moved = x + self.clip(x, self.direction(grad).mul_(scale).add_(x_adv).sub_(x))
        x_adv.copy_(torch.where(frozen.view_as(scale), x_adv, moved))

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

    def project_(
        self, x_adv: torch.Tensor, x: torch.Tensor, work: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Min / max against the box bounds, in place and idempotent bit for bit (which is what lets
        a frozen sample stay exactly where it succeeded); the bounds live in ``work`` when given."""
        bound = torch.sub(x, self.eps) if work is None else torch.sub(x, self.eps, out=work)
        torch.maximum(x_adv, bound.clamp_(min=0.0), out=x_adv)
        torch.add(x, self.eps, out=bound).clamp_(max=1.0)
        return torch.minimum(x_adv, bound, out=x_adv)

    def step_(
        self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, step: float, frozen: torch.Tensor
    ) -> None:
        """Allocates nothing the size of the input: the direction and then the bounds live in ``grad``;
        a frozen sample takes a step of 0 and the projection leaves it where it is."""
        scale = batch_view((~frozen).to(x_adv.dtype).mul_(step), x_adv)
        x_adv.addcmul_(grad.sign_(), scale)
        self.project_(x_adv, x, work=grad)


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


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H*W) or (B, C, T, H, W) -> (B, T, H*W): channels folded into pixels."""
    if t.ndim == 5:
        return t.transpose(1, 2).flatten(3).flatten(0, 1).abs().amax(1).view(t.shape[0], t.shape[2], -1)
    return t.abs().amax(1).flatten(1)[:, None]


@dataclass(frozen=True)
class L0(ThreatModel):
    """At most ``eps`` changed pixels per image (per frame of a clip); a pixel counts once however many
    of its channels change. ``project_`` keeps the ``eps`` largest changes and resets the others."""

    p: float = 0.0
    name: str = "L0"

    @property
    def budget(self) -> int:
        return int(self.eps)

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        """Salt or pepper (all channels to 1 or 0) on ``eps`` random pixels of every image / frame."""
        frames = _pixels(x)
        score = uniform((x.shape[0], *frames.shape[1:], 2), generator, x.device, x.dtype)
        keep = torch.zeros_like(frames, dtype=torch.bool)
        keep.scatter_(2, score[..., 0].topk(min(self.budget, frames.shape[2]), dim=2).indices, True)
        value = (score[..., 1] >= 0.5).to(x.dtype)
        return (_unpixels(value, x) - x) * _unpixels(keep.to(x.dtype), x)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        size = _pixels(delta)
        k = min(self.budget, size.shape[2])
        keep = torch.zeros_like(size, dtype=torch.bool)
        if k:
            keep.scatter_(2, size.topk(k, dim=2).indices, True)
        return delta * _unpixels((keep & (size > 0)).to(delta.dtype), delta)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Changed pixels of the most changed frame (of the image), per sample."""
        return (_pixels(delta) > 0).sum(2).amax(1).to(delta.dtype)

    def within(self, delta: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
        return self.norm(delta) <= self.budget


def _unpixels(per_pixel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse layout of ``_pixels``: (B, F, H*W) -> broadcastable to ``like``."""
    if like.ndim == 5:
        b, _, t, h, w = like.shape
        return per_pixel.view(b, 1, t, h, w)
    return per_pixel.view(like.shape[0], 1, *like.shape[2:])


@dataclass(frozen=True)
class Mask(ThreatModel):
    """Changes only where ``mask`` (broadcastable to the input, 1 = may change) is set, each by at most
    ``eps`` (1: unbounded inside the [0, 1] box): a patch, a sticker, the frames a video attack touches."""

    eps: float = 1.0
    p: float = float("inf")
    name: str = "Mask"
    mask: torch.Tensor = field(default_factory=lambda: torch.ones(()), compare=False, repr=False)

    def init(self, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        return random_linf(x, self.eps, generator).mul_(self.mask.to(x))

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign() * self.mask.to(grad)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return project_linf(delta, self.eps) * (self.mask.to(delta) > 0)

    def project_(
        self, x_adv: torch.Tensor, x: torch.Tensor, work: torch.Tensor | None = None
    ) -> torch.Tensor:
        inside = Linf(eps=self.eps).project_(x_adv, x, work)
        return inside.copy_(torch.where(self.mask.to(x) > 0, inside, x))

    def within(self, delta: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
        outside = (delta * (self.mask.to(delta) <= 0)).flatten(1).abs().amax(1) == 0
        return outside & super().within(delta, tol)


# the Lp balls an ``LpAttack`` names by ``norm`` (L0 and Mask are built directly by the attacks that use them)
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
