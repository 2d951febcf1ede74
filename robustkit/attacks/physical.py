"""What the physical attacks (patch, eyeglass, sticker, roa) share: targets, losses, 8-bit output,
and evaluation under held-out transformations and on a fixed rotation x scale x brightness grid.

Each physical attack returns ``x_adv`` quantized to 8 bits (what a printer or a saved image keeps),
so its ``success`` is the success after quantization. ``metrics['eot_success_rate']`` is the fraction
of held-out transformation draws under which the attack still succeeds, and ``artifacts['eot_curve']``
the success rate on the evaluation grid, both computed from the quantized image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..eot import EOT, EvalGrid, make_eot
from ..functional.random import GeneratorLike
from ..models.state import preserved
from .base import AttackResult, Counter, forward, is_success, positive
from .lp import LossAttack

# The transformations a printed attack meets when it is not optimized for any: the default
# held-out distribution for evaluation.
DEFAULT_EVAL_EOT = EOT(rotation=10.0, scale=(0.9, 1.1), translate=0.05, brightness=0.1, contrast=0.1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest of 256 levels per channel, as an 8-bit image stores it."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def chunked_logits(model: Callable, x: torch.Tensor, counter: Counter, chunk: int = 512) -> torch.Tensor:
    """Logits of a large stack of images, ``chunk`` at a time, without gradients."""
    with torch.no_grad():
        return torch.cat([forward(model, x[i : i + chunk], counter) for i in range(0, x.shape[0], chunk)])


@dataclass(frozen=True, kw_only=True)
class PhysicalAttack(LossAttack):
    """Base of the physical attacks. ``targeted`` picks targets by ``target_mode`` unless the caller
    passes ``target``; ``eval_draws`` held-out EOT draws per image feed ``eot_success_rate`` (0: off);
    ``eval_grid`` adds the rotation x scale x brightness curve to the artifacts."""

    input_kind: ClassVar[str] = "image"
    physical: ClassVar[bool] = True

    eval_draws: int = 8
    eval_grid: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.eval_draws, "eval_draws", allow_zero=True)

    def params(self) -> dict[str, Any]:
        """Configuration only: fitted tensors (patch, texture) are results, not recipe keys."""
        return {k: v for k, v in super().params().items() if not isinstance(v, torch.Tensor)}

    # ------------------------------------------------------------------ shared pieces
    def make_eot(self, cfg: Mapping[str, Any] | None, **defaults: Any) -> EOT:
        return make_eot(cfg, f"{self.name} eot", **defaults)

    def finish(
        self,
        model: Callable,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        counter: Counter,
        *,
        generator: GeneratorLike,
        eval_eot: EOT | None,
        artifacts: dict[str, Any],
        metrics: dict[str, torch.Tensor] | None = None,
    ) -> AttackResult:
        """Quantize, classify, and evaluate under held-out transformations of the whole image."""
        x_adv = quantize(x_adv.detach())
        with torch.no_grad():
            logits = forward(model, x_adv, counter)
        success = self.succeeded(logits, y, target)
        metrics = dict(metrics or {})
        if target is not None:
            metrics["target"] = target.detach().clone()
        eot = eval_eot if eval_eot is not None and not eval_eot.identity else DEFAULT_EVAL_EOT
        if self.eval_draws:
            rows, params = eot.draw(x_adv, generator, n_samples=self.eval_draws)
            hits = self.succeeded(chunked_logits(model, quantize(rows), counter), y.repeat(self.eval_draws),
                                  None if target is None else target.repeat(self.eval_draws))  # fmt: skip
            metrics["eot_success_rate"] = hits.view(self.eval_draws, -1).float().mean(0)
            artifacts["eval_eot_params"] = params.as_artifact()
        if self.eval_grid:
            grid = EvalGrid()
            p = grid.points()["rotation"].numel()
            rows = grid.eot().apply(
                x_adv.repeat(p, 1, 1, 1), grid.image_params(x_adv.shape[0], x_adv.shape[-2:], x_adv.device)
            )
            hits = self.succeeded(chunked_logits(model, quantize(rows), counter), y.repeat(p),
                                  None if target is None else target.repeat(p))  # fmt: skip
            artifacts["eot_curve"] = grid.curves(hits.view(p, -1))
        return AttackResult(
            x_adv=x_adv,
            success=success,
            logits=logits,
            counters=counter.as_dict(),
            artifacts=artifacts,
            metrics=metrics,
        )

    @staticmethod
    def succeeded(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Untargeted: misclassified. Targeted: the target wins on an image of another class."""
        ok = is_success(logits, y, target)
        return ok & (y != target) if target is not None else ok

    def guarded(self, model: Callable):
        """The model state guard for ``fit`` (``__call__`` already guards ``run``)."""
        return preserved(model)
