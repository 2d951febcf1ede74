"""What the physical attacks (patch, eyeglass, sticker, roa) share: targets, losses, 8-bit output,
and evaluation under held-out transformations and on a fixed rotation x scale x brightness grid.

Each physical attack returns ``x_adv`` quantized to 8 bits (what a printer or a saved image keeps),
so its ``success`` is the success after quantization. ``metrics['eot_success_rate']`` is the fraction
of held-out transformation draws under which the attack still succeeds, and ``artifacts['eot_curve']``
the success rate on the evaluation grid, both computed from the quantized image.

Printing: every physical attack takes a ``palette`` (a built-in palette name or a palette file measured
from a photographed colour chart; default: the 30 colours of Sharif et al.). For the printed artefact
(frame, sticker, patch) it reports per image ``nps``, ``tv``, ``palette_distance`` and
``printable_fraction`` (within ``print_tolerance`` of the palette), and ``palette_success``: the success
once the artefact's pixels are snapped to their nearest printable colour, beside the 8-bit ``success``.
The attacks that optimize a texture (:class:`Printable`) weigh total variation and non-printability.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch

from ..eot import EOT, EvalGrid, make_eot
from ..functional.palette import load_palette
from ..functional.penalties import non_printability, total_variation
from ..functional.printing import PRINT_TOLERANCE, printability, quantize_to_palette
from ..functional.random import GeneratorLike
from ..models.state import preserved
from .base import AttackResult, Counter, forward, is_success, positive
from .loop import KeepBest, Objective
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
    palette: str | None = None
    print_tolerance: float = PRINT_TOLERANCE

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.eval_draws, "eval_draws", allow_zero=True)
        positive(self.print_tolerance, "print_tolerance")
        load_palette(self.palette)  # a bad palette fails when the recipe loads

    def palette_colors(self, like: torch.Tensor) -> torch.Tensor:
        """The printable colours (P, 3) on ``like``'s device and dtype (resolved once per device and
        dtype: the penalties ask for them at every step of the attack)."""
        key = (like.device, like.dtype)
        if key not in self._palettes:
            self._palettes[key] = load_palette(self.palette, device=like.device, dtype=like.dtype)
        return self._palettes[key]

    @cached_property
    def _palettes(self) -> dict[tuple[torch.device, torch.dtype], torch.Tensor]:
        return {}

    def params(self) -> dict[str, Any]:
        """Configuration only: fitted tensors (patch, texture) are results, not recipe keys."""
        return {k: v for k, v in super().params().items() if not isinstance(v, torch.Tensor)}

    # ------------------------------------------------------------------ shared pieces
    def make_eot(self, cfg: Mapping[str, Any] | None, **defaults: Any) -> EOT:
        """The EOT of a recipe; its print stage jitters this attack's palette unless it names one."""
        return make_eot(cfg, f"{self.name} eot", **({"palette": self.palette} | defaults))

    def print_metrics(
        self,
        artefact: torch.Tensor,
        mask: torch.Tensor,
        success_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Printability of ``artefact`` (B, 3, H, W), the printed colours, under ``mask`` (B or 1, 1, H,
        W), and with ``success_of`` (the artefact snapped to the palette -> (B,) success) the success
        after palette quantization (``palette_success``), one value per image."""
        pal = self.palette_colors(artefact)
        out = printability(artefact, mask, pal, self.print_tolerance)
        if success_of is not None:
            with torch.no_grad():
                out["palette_success"] = success_of(
                    quantize(quantize_to_palette(artefact, pal, mask))
                ).float()
        return out

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
        print_mask: torch.Tensor | None = None,
        artefact: torch.Tensor | None = None,
    ) -> AttackResult:
        """Quantize, classify, and evaluate under held-out transformations of the whole image. With
        ``print_mask`` (the printed artefact's pixels, (B or 1, 1, H, W)), the printability of
        ``artefact`` (the printed colours, default ``x_adv``) under it and ``palette_success``: the
        success of ``x_adv`` with the artefact snapped to the palette laid over it."""
        x_adv = quantize(x_adv.detach())
        with torch.no_grad():
            logits = forward(model, x_adv, counter)
        success = self.succeeded(logits, y, target)
        metrics = dict(metrics or {})
        if print_mask is not None:
            m = print_mask.to(x_adv.dtype)

            def judge(snapped: torch.Tensor) -> torch.Tensor:
                composite = quantize(x_adv * (1 - m) + snapped * m)
                return self.succeeded(forward(model, composite, counter), y, target)

            art = x_adv if artefact is None else artefact.detach().to(x_adv)
            metrics |= self.print_metrics(art, print_mask, judge)
            artifacts["palette"] = self.palette_colors(x_adv).cpu()
        if target is not None:
            metrics["target"] = target.detach().clone()
        eot = eval_eot if eval_eot is not None and not eval_eot.identity else DEFAULT_EVAL_EOT
        if self.eval_draws:
            rows, params = eot.draw(x_adv, generator, n_samples=self.eval_draws, mask=print_mask)
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


@dataclass(frozen=True, kw_only=True)
class Printable:
    """The printability penalties of an optimized texture: ``tv_weight`` x total variation and
    ``nps_weight`` x non-printability (the soft-min form, towards the attack's ``palette``), both
    means over the artefact's pixels, so that weights near 1 matter whatever the artefact's size.

    ``kappa`` caps the loss (with ``loss: cw``, a margin of ``kappa`` logits: Carlini and Wagner's
    confidence): once an image is fooled by that margin only the penalties move its texture, so the
    remaining steps make it smoother and more printable instead of ever more adversarial, and the
    texture kept is the one of the best penalized objective (not of the highest loss)."""

    tv_weight: float = 0.0
    nps_weight: float = 0.0
    kappa: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        positive(self.tv_weight, "tv_weight", allow_zero=True)
        positive(self.nps_weight, "nps_weight", allow_zero=True)
        if self.kappa is not None:
            positive(self.kappa, "kappa", allow_zero=True)

    @property
    def penalized(self) -> bool:
        return bool(self.tv_weight or self.nps_weight)

    def capped(self, objective: Objective) -> Objective:
        """``objective`` counted up to ``kappa`` (unchanged without one)."""
        if self.kappa is None:
            return objective
        kappa = float(self.kappa)
        return lambda logits: objective(logits).clamp(max=kappa)

    def keep_best(
        self, initial: torch.Tensor, penalty: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **kw: Any
    ) -> KeepBest:
        """The keep strategy: the highest loss, or with ``kappa`` and a penalty the highest loss less
        ``penalty(param, x_adv)`` (B,) (``final``, when given, is then penalized too)."""
        if self.kappa is None or not self.penalized:
            return KeepBest(initial, **kw)
        return KeepPenalized(initial, penalty=penalty, **kw)

    def print_penalty(self, texture: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The weighted penalties of ``texture`` (B, 3, H, W) under ``mask``: (B,), zero when off."""
        pen = torch.zeros(texture.shape[0], device=texture.device, dtype=texture.dtype)
        if self.tv_weight:
            pen = pen + self.tv_weight * total_variation(texture, mask)
        if self.nps_weight:
            pen = pen + self.nps_weight * non_printability(texture, self.palette_colors(texture), mask)
        return pen


class KeepPenalized(KeepBest):
    """:class:`KeepBest` of the penalized objective: the gain less ``penalty(param, x_adv)``."""

    def __init__(self, initial: torch.Tensor, *, penalty: Callable, final: Callable | None = None, **kw: Any):
        self.penalty = penalty
        super().__init__(initial, final=None if final is None else self._final(final), **kw)

    def _final(self, final: Callable) -> Callable:
        return lambda param: final(param) - self.penalty(param, None)

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        with torch.no_grad():
            score = gain - self.penalty(param, x_adv)
        return super().observe(step, param, x_adv, score, logits)
