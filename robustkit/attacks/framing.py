"""Adversarial framing (Zajac et al., AAAI 2019): an adversarial border of width ``width`` around each frame.

The image content is untouched; only the outer ``width`` pixels of every frame are optimized
(``placement='replace'``), or the frame is first shrunk to fit inside the border so nothing of it is
lost (``placement='shrink'``, the paper's setting of a frame around the picture). The border is
optimized with Adam, per frame or shared by all frames (``shared_frames``), and rounded to 8 bits
(straight-through during optimization).

With ``universal: true`` the frame is one for all inputs (Zajac et al.'s setting): it is trained with
Adam over a training split (``fit``, ``train_steps`` minibatch steps) and then framed around every
held-out clip unchanged (``robustkit.attacks.universal``).

``width`` is given for frames of ``reference_size`` pixels (the paper's 10 px at 112 px for C3D on
UCF-101) and scaled down proportionally on smaller frames, never below one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..functional.random import GeneratorLike, uniform
from ..functional.video import border_mask, from_frames, quantize8, to_frames
from .base import RESULT, AttackResult, Counter, positive, register
from .loop import Ascent, until_success
from .lp import final_result
from .universal import UniversalVideo
from .video_base import Adam, VideoAttack


def scaled_width(width: int, height: int, frame_width: int, reference_size: int | None) -> int:
    """Border width for a frame of ``height x frame_width`` pixels."""
    side = min(height, frame_width)
    w = width if reference_size is None or side >= reference_size else round(width * side / reference_size)
    return max(1, min(int(w), (side - 1) // 2))


@dataclass(frozen=True, kw_only=True)
class Framing(VideoAttack, UniversalVideo):
    """Adversarial border of ``width`` pixels (at ``reference_size``) on every frame; per clip, or one
    for all clips with ``universal`` (the trained ``frame``, a result, not a recipe key)."""

    trained_field: ClassVar[str] = "frame"

    width: int = 10
    reference_size: int | None = 112
    placement: str = "replace"
    shared_frames: bool = False
    steps: int = 50
    learning_rate: float = 0.05
    quantize: bool = True
    frame: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={RESULT: True})

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.width, "width")
        if self.reference_size is not None:
            positive(self.reference_size, "reference_size")
        if self.placement not in ("replace", "shrink"):
            raise ConfigError(f"placement must be 'replace' or 'shrink', got {self.placement!r}")
        positive(self.steps, "steps", allow_zero=True)
        positive(self.learning_rate, "learning_rate")
        self.check_universal()

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The clips inside the border, the border mask and its width in pixels."""
        h, w = x.shape[-2:]
        bw = scaled_width(self.width, h, w, self.reference_size)
        m = border_mask(h, w, bw, x.device).to(x.dtype)
        return (x if self.placement == "replace" else _shrink(x, bw)), m, bw

    def compose(
        self, x: torch.Tensor, inside: torch.Tensor, m: torch.Tensor, p: torch.Tensor
    ) -> torch.Tensor:
        x_adv = inside * (1 - m) + m * p
        return quantize8(x_adv, x, straight_through=True) if self.quantize else x_adv

    def _optimize(self, model, x, y, g, counter: Counter) -> torch.Tensor:
        """The universal frame (1, C, T or 1, H, W), trained on clips ``x``."""
        _, c, t, h, w = x.shape
        param = uniform((1, c, 1 if self.shared_frames else t, h, w), g, x.device, x.dtype)
        adam = Adam(self.learning_rate)

        def compose(xb: torch.Tensor, p: torch.Tensor, _) -> torch.Tensor:
            inside, m, _ = self.geometry(xb)
            return self.compose(xb, inside, m, p)

        def update(p: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            return (p + adam.step(grad)).clamp(0, 1)

        param = self.train_shared(model, param, x, y, g, counter, compose=compose, update=update)
        return (param * 255).round() / 255

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        b, c, t, h, w = x.shape
        inside, m, bw = self.geometry(x)
        if self.universal:
            target = target if target is not None else self.universal_targets(y)
            frame = self.trained(model, x, y, generator, counter)
            if frame.shape[1:] != (c, 1 if self.shared_frames else t, h, w):
                raise ConfigError(f"the universal frame was trained on clips of {tuple(frame.shape[1:])} "
                                  f"(C, T, H, W), these are {(c, t, h, w)}")  # fmt: skip
            x_adv = inside * (1 - m) + m * frame
            x_adv = quantize8(x_adv, x) if self.quantize else x_adv
            artifacts = {"framing_width": bw, "frame": (frame[0, :, 0] * m).cpu()}
            return final_result(model, x_adv, y, target, counter, artifacts=artifacts)
        target = self.targets(model, x, y, target, generator, counter)
        param = uniform((b, c, 1 if self.shared_frames else t, h, w), generator, x.device, x.dtype)
        adam = Adam(self.learning_rate)

        def update(p: torch.Tensor, g: torch.Tensor, _: int) -> torch.Tensor:
            return (p + adam.step(g)).clamp(0, 1)

        ascent = Ascent(objective=self.objective(y, target), update=update,
                        compose=lambda p: self.compose(x, inside, m, p))  # fmt: skip
        x_adv, _, _ = until_success(model, param, ascent, y, target, counter, steps=self.steps)
        x_adv = quantize8(x_adv, x) if self.quantize else x_adv  # exact 8-bit values
        return final_result(model, x_adv, y, target, counter, artifacts={"framing_width": bw})


def _shrink(x: torch.Tensor, border: int) -> torch.Tensor:
    """Each frame resized into the inside of the border; the border itself is left at zero."""
    b, _, _, h, w = x.shape
    small = F.interpolate(
        to_frames(x),
        size=(h - 2 * border, w - 2 * border),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return from_frames(F.pad(small, (border, border, border, border)), b).clamp(0, 1)


register("framing")(Framing)
