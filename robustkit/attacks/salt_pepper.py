"""Salt-and-pepper attack on video: at most ``pixels`` pixels per frame set to white or black (L0).

A greedy, gradient-guided search in ``rounds`` rounds: each round takes the input gradient at the
current clip, scores every unused pixel by the first-order gain of setting all its channels to 1
(salt) or 0 (pepper), and sets the best ones of each frame, so that after the last round every
frame has received its budget. Samples stop receiving pixels once they are misclassified.

The literature's budget is 100 pixels per frame of 112x112 (C3D on UCF-101): a density of 0.8 % of a
frame. ``pixels`` is given at ``reference_size`` and scaled with the frame's area, so a smaller frame
gets the same density (8 pixels on 32x32 frames), never fewer than one pixel; ``reference_size: null``
takes ``pixels`` as they are. ``max_fraction`` caps the budget at that fraction of a frame's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..functional.random import GeneratorLike
from .base import AttackResult, Counter, positive, register
from .loop import Ascent, KeepLast, ascend
from .lp import final_result
from .video_base import VideoAttack


def pixel_budget(
    pixels: int, height: int, width: int, max_fraction: float = 1.0, reference_size: int | None = None
) -> int:
    """Pixels per frame: ``pixels`` at frames of ``reference_size`` squared, scaled to the area of a
    ``height`` x ``width`` frame (smaller frames only), capped at ``max_fraction`` of it, at least one."""
    area = height * width
    scaled = (
        pixels if reference_size is None or area >= reference_size**2 else pixels * area / reference_size**2
    )
    return max(1, min(round(scaled), math.floor(max_fraction * area)))


@dataclass(frozen=True, kw_only=True)
class SaltPepper(VideoAttack):
    """``pixels`` salt-or-pepper pixels per frame of ``reference_size`` (the same density on other frame
    sizes), chosen greedily from the gradient in ``rounds`` rounds."""

    pixels: int = 100
    reference_size: int | None = 112
    max_fraction: float = 1.0
    rounds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.pixels, "pixels", allow_zero=True)
        if not 0 < self.max_fraction <= 1:
            raise ConfigError(f"max_fraction must be in (0, 1], got {self.max_fraction!r}")
        positive(self.rounds, "rounds")
        if self.reference_size is not None:
            positive(self.reference_size, "reference_size")

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        target = self.targets(model, x, y, target, generator, counter)
        b, _, t, h, w = x.shape
        if self.pixels == 0:
            return final_result(model, x.clone(), y, target, counter, artifacts={"pixels_per_frame": 0})
        budget = pixel_budget(self.pixels, h, w, self.max_fraction, self.reference_size)
        rounds = min(self.rounds, budget)
        used = torch.zeros(b, t, h * w, dtype=torch.bool, device=x.device)
        keep = KeepLast(y, target)  # stops once every clip is misclassified

        def update(x_adv: torch.Tensor, grad: torch.Tensor, r: int) -> torch.Tensor:
            nonlocal used
            n = math.ceil(budget * (r + 1) / rounds) - math.ceil(budget * r / rounds)
            # first-order gain of salt (1) and pepper (0) at each pixel, all channels together
            salt = (grad * (1 - x_adv)).sum(1)
            pepper = (grad * (0 - x_adv)).sum(1)
            gain = torch.maximum(salt, pepper).flatten(2)  # (B, T, H*W)
            value = (salt >= pepper).flatten(2)
            gain = gain.masked_fill(used, -float("inf"))
            pick = gain.topk(n, dim=2).indices
            chosen = torch.zeros_like(used).scatter_(2, pick, True) & ~keep.found[:, None, None]
            used = used | chosen
            fill = value.view(b, 1, t, h, w).to(x.dtype).expand_as(x_adv)
            return torch.where(chosen.view(b, 1, t, h, w), fill, x_adv)

        ascent = Ascent(objective=self.objective(y, target), update=update)
        x_adv = ascend(model, x.clone(), ascent, keep, steps=rounds, counter=counter)
        result = final_result(model, x_adv, y, target, counter, artifacts={"pixels_per_frame": budget})
        result.metrics["salt_pepper_pixels"] = used.sum(2).amax(1).to(x.dtype)
        return result


register("salt-pepper")(SaltPepper)
