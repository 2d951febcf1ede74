"""BPDA, backward pass differentiable approximation (Athalye et al., ICML 2018).

Defenses often put a non-differentiable step in front of the classifier (JPEG compression, bit-depth
reduction, median filtering, a purifier that is not differentiated). Its gradient is zero or
undefined, so gradient attacks stall and the model looks robust when it is not. BPDA keeps the exact
forward pass and replaces only the backward pass:

- identity (the default, "straight-through"): right when the step roughly preserves its input;
- ``approx``: a differentiable surrogate g with g(x) ~ f(x); the gradient is that of g;
- ``backward``: any ``(x, grad_output) -> grad_input`` function.

Usage: ``model = nn.Sequential(BPDA(jpeg), classifier)`` and attack ``model`` as usual. The forward
value is always ``fn(x)``, so clean and adversarial accuracy are those of the real defense.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

Backward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _CustomBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable, backward: Backward) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.backward_fn = backward
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        grad = ctx.backward_fn(x, grad_output)
        if grad.shape != x.shape:
            raise ConfigError(f"BPDA backward returned shape {tuple(grad.shape)}, expected {tuple(x.shape)}")
        return grad, None, None


class _ValueOf(torch.autograd.Function):
    """The value of ``value`` bit for bit (the deployed forward), the gradient of ``surrogate``."""

    @staticmethod
    def forward(ctx: Any, surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


class BPDA(nn.Module):
    """Run ``fn`` forward; differentiate through identity, ``approx`` or a custom ``backward``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, approx: Callable | None = None,
                 backward: Backward | None = None) -> None:  # fmt: skip
        super().__init__()
        if approx is not None and backward is not None:
            raise ConfigError("BPDA: give either approx (a differentiable surrogate) or backward, not both")
        self.fn = fn
        self.approx = approx
        self.backward_fn = backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward_fn is not None:
            return _CustomBackward.apply(x, self.fn, self.backward_fn)
        with torch.no_grad():
            out = self.fn(x)
        surrogate = x if self.approx is None else self.approx(x)
        if surrogate.shape != out.shape:
            what = "the input" if self.approx is None else "approx(x)"
            raise ConfigError(
                f"BPDA: fn changes the shape {tuple(surrogate.shape)} -> {tuple(out.shape)}, so {what} cannot "
                "stand in for it in the backward pass; pass approx= with a surrogate of the output's shape"
            )
        return _ValueOf.apply(surrogate, out)
