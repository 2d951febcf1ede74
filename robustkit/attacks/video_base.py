"""What the video attacks share: the ``VideoAttack`` base class, Adam steps and the final verdict.

Every video attack optimizes a parameter (a clip perturbation, one RGB offset per frame, the pixels
of a border or a rectangle) that ``compose`` turns into the adversarial clip, with the one ascent loop
of ``robustkit.attacks.loop``. ``VideoAttack.__call__`` checks the 5-D layout and adds per-frame
perturbation metrics to every result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..functional.video import check_video, frame_metrics
from .base import AttackResult
from .lp import LossAttack


@dataclass(frozen=True, kw_only=True)
class VideoAttack(LossAttack):
    """Base class of the video attacks: input ``(B, C, T, H, W)``, per-frame metrics in the result.

    ``loss`` is the per-sample objective ('ce', 'dlr', 'cw'); ``targeted`` uses the ``target``
    passed at call time, else picks targets by ``target_mode`` ('random', 'least-likely' or a class).
    """

    input_kind: ClassVar[str] = "video"

    def __call__(self, model: Callable, x: torch.Tensor, y: torch.Tensor, **call) -> AttackResult:
        check_video(x)
        result = super().__call__(model, x, y, **call)
        result.metrics = {**frame_metrics(result.x_adv - x), **result.metrics}
        return result


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
