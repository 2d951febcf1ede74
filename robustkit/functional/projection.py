"""Norms, projections onto Lp balls and random starts. Work on any (B, ...) layout."""

from __future__ import annotations

import torch

from .random import GeneratorLike, normal, uniform


def batch_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample tensor (B,) viewed to broadcast against ``like`` (B, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample Lp norm of a (B, ...) tensor."""
    return t.flatten(1).norm(p=p, dim=1)


def project_linf(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        e = batch_view(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    return delta.clamp(-eps, eps)


def project_l2(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    n = flat_norm(delta, 2)
    eps_t = eps if isinstance(eps, torch.Tensor) else torch.full_like(n, float(eps))
    factor = torch.where(n > eps_t, eps_t / (n + 1e-12), torch.ones_like(n))
    return delta * batch_view(factor, delta)


def unit_l2(g: torch.Tensor) -> torch.Tensor:
    """g scaled to unit L2 norm per sample (zero stays zero)."""
    return g / batch_view(flat_norm(g, 2) + 1e-12, g)


def random_linf(x: torch.Tensor, eps: float, generator: GeneratorLike) -> torch.Tensor:
    return uniform(x.shape, generator, x.device, x.dtype).mul_(2).sub_(1).mul_(eps)


def random_l2(x: torch.Tensor, eps: float, generator: GeneratorLike) -> torch.Tensor:
    """Uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)."""
    draw = normal((x.shape[0], x[0].numel() + 1), generator, x.device, x.dtype)
    g = draw[:, :-1].view_as(x)
    r = torch.special.ndtr(draw[:, -1]) ** (1.0 / x[0].numel())  # uniform from the extra Gaussian draw
    return unit_l2(g) * batch_view(r * eps, g)
