"""What the video attacks share: the ``VideoAttack`` base class and one optimization loop.

Every video attack optimizes a parameter (a clip perturbation, one RGB offset per frame, the pixels
of a border or a rectangle) that ``compose`` turns into the adversarial clip. ``optimize`` runs
gradient ascent on it with input-only gradients and keeps, per sample, the first (or the last)
successful iterate. ``VideoAttack.__call__`` checks the 5-D layout and adds per-frame perturbation
metrics to every result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..functional.losses import get_loss
from ..functional.random import GeneratorLike
from ..functional.video import check_video, frame_metrics
from .base import Attack, AttackResult, Counter, forward, is_success, resolve_targets

Compose = Callable[[torch.Tensor], torch.Tensor]
Update = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def where_batch(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two batches of the same shape."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


@dataclass(frozen=True, kw_only=True)
class VideoAttack(Attack):
    """Base class of the video attacks: input ``(B, C, T, H, W)``, per-frame metrics in the result.

    ``loss`` is the per-sample objective ('ce', 'dlr', 'cw'); ``targeted`` uses the ``target``
    passed at call time, else picks targets by ``target_mode`` ('random', 'least-likely' or a class).
    """

    input_kind: ClassVar[str] = "video"

    loss: str = "ce"
    targeted: bool = False
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        get_loss(self.loss)

    def __call__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        generator: GeneratorLike = None,
        **judging: Any,  # criterion=, precisions= (see Attack.__call__)
    ) -> AttackResult:
        check_video(x)
        result = super().__call__(model, x, y, target=target, generator=generator, **judging)
        result.metrics = {**frame_metrics(result.x_adv - x), **result.metrics}
        return result

    def objective(
        self, y: torch.Tensor, target: torch.Tensor | None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        fn = get_loss(self.loss)
        return lambda logits: fn(logits, y, target)

    def targets(self, model, x, y, target, generator, counter: Counter) -> torch.Tensor | None:
        return resolve_targets(
            model,
            x,
            y,
            target,
            targeted=self.targeted,
            mode=self.target_mode,
            generator=generator,
            counter=counter,
        )


def optimize(
    model: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    param: torch.Tensor,
    *,
    compose: Compose,
    update: Update,
    steps: int,
    objective: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor | None,
    counter: Counter,
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep: str = "first",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient ascent on ``param``; returns ``(x_adv, success, param)``.

    Each step evaluates ``compose(param)``, maximizes ``objective(logits) - penalty(param)`` (both
    per sample) and calls ``update(param, grad, step)``, which takes the step and projects. Per
    sample the result is the first successful iterate (``keep='first'``), the last successful one
    (``keep='last'``, for attacks whose penalty keeps shrinking the perturbation after success), or
    the final iterate when none succeeded.
    """
    found = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    best: torch.Tensor | None = None
    for i in range(steps):
        with torch.enable_grad():
            leaf = param.detach().requires_grad_(True)
            x_adv = compose(leaf)
            logits = forward(model, x_adv, counter)
            gain = objective(logits)
            if penalty is not None:
                gain = gain - penalty(leaf)
            (grad,) = torch.autograd.grad(gain.sum(), leaf)
        counter.backward += 1
        hit = is_success(logits.detach(), y, target)
        take = hit & ~found if keep == "first" else hit
        best = x_adv.detach() if best is None else where_batch(take, x_adv.detach(), best)
        found = found | hit
        param = update(param.detach(), grad, i)
    with torch.no_grad():
        x_adv = compose(param)
        logits = forward(model, x_adv, counter)
    hit = is_success(logits, y, target)
    take = (hit & ~found if keep == "first" else hit) | ~(found | hit)
    best = x_adv if best is None else where_batch(take, x_adv, best)
    return best.detach(), found | hit, param.detach()


class Adam:
    """Element-wise Adam ascent steps on a batch of parameters (every sample independent)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.t = 0

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The ascent increment for this gradient."""
        b1, b2 = self.betas
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)


def final_result(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    counter: Counter,
    **extra,
) -> AttackResult:
    """Evaluate the final adversarial clips once and package the result."""
    with torch.no_grad():
        logits = forward(model, x_adv, counter)
    return AttackResult(
        x_adv=x_adv.detach(),
        success=is_success(logits, y, target),
        logits=logits,
        counters=counter.as_dict(),
        **extra,
    )
