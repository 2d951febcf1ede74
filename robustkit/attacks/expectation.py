"""Expectation over randomness for stochastic models (the EOT of Athalye et al. 2018, model side).

A randomized defense returns a different output on every call. Attacking one draw follows noise; the
attacker should instead follow the gradient of the *expected* loss, which is the average of the
per-draw gradients. Two tools:

- ``expected_loss_and_grad`` averages loss, logits and input gradient over ``samples`` independent
  forward/backward passes, one pass at a time (memory of a single pass). The ``eot_samples`` of APGD,
  PGD and FGSM and the ``rand`` version of ``autoattack`` use it.
- ``Expectation`` wraps a model so that its forward returns the logits averaged over ``samples``
  calls; differentiating it gives the averaged gradient in one backward (memory of ``samples`` passes).
  Use it to hand a stochastic model to an attack that has no ``eot_samples`` field.

This module averages over the model's *own* randomness. Expectation over input transformations
(physical attacks) lives in ``robustkit.eot``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .base import Counter, loss_and_grad


def expected_loss_and_grad(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_adv: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    counter: Counter,
    samples: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean per-sample loss, mean logits and mean input gradient over ``samples`` passes.

    With ``samples == 1`` this is exactly ``loss_and_grad``. Each pass is a separate forward and
    backward, so a model that draws its randomness per call (or per batch) gets fresh draws.
    """
    if samples == 1:
        return loss_and_grad(model, x_adv, objective, counter)
    loss, logits, grad = averaged(lambda: loss_and_grad(model, x_adv, objective, counter), samples)
    return loss, logits, grad


def averaged(one_pass: Callable[[], tuple[torch.Tensor, ...]], samples: int) -> tuple[torch.Tensor, ...]:
    """The mean over ``samples`` calls of ``one_pass()`` of each tensor it returns (summed one pass at a
    time: the memory of one pass). ``robustkit.attacks.loop.Ascent`` (PGD, FGSM) uses it for EOT."""
    total = one_pass()
    for _ in range(samples - 1):
        total = tuple(t + u for t, u in zip(total, one_pass(), strict=True))
    return tuple(t / samples for t in total)


class Expectation(nn.Module):
    """``Expectation(model, samples)(x)`` = mean over ``samples`` calls of ``model(x)``.

    Gradients flow through every call, so ``d mean / dx`` is the EOT gradient. The wrapped model is a
    submodule: ``preserved`` and ``.eval()`` reach it.
    """

    def __init__(self, model: nn.Module, samples: int = 20) -> None:
        super().__init__()
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ConfigError(f"Expectation: samples must be an integer >= 1, got {samples!r}")
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.model(x)
        for _ in range(self.samples - 1):
            total = total + self.model(x)
        return total / self.samples
