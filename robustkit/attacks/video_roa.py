"""Rectangular occlusion on video (ROA, Wu, Tong, Vorobeychik 2020), one rectangle per frame.

Two phases, as in the paper: find where the rectangle hurts most with a gray rectangle, then run
unbounded sign-gradient steps on the pixels inside it. The position search is

- ``gradient``: rank positions by the squared input gradient inside the rectangle (one backward
  pass), then evaluate the ``candidates`` best with a gray rectangle and keep the worst for the model;
- ``exhaustive``: evaluate every position of a strided grid.

With ``per_frame`` each frame gets its own position (gradient: the c-th best position of every
frame forms candidate c; exhaustive: the best common position, then each frame's position improved
in turn, ``T * positions`` evaluations); otherwise one position serves the whole clip, like a
sticker fixed in the scene. Pixels are rounded to 8 bits (straight-through during optimization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..functional.random import GeneratorLike
from ..functional.video import box_mask, quantize8
from .base import AttackResult, Counter, forward, loss_and_grad, positive, register
from .loop import Ascent, until_success
from .lp import final_result
from .video_base import VideoAttack


def rectangle_size(height: int, width: int, area: float, aspect: float) -> tuple[int, int]:
    """(h, w) of a rectangle covering ``area`` of the frame with width / height = ``aspect``."""
    h = max(1, min(height, round(math.sqrt(area * height * width / aspect))))
    w = max(1, min(width, round(h * aspect)))
    return h, w


def grid_positions(height: int, width: int, box_h: int, box_w: int, stride: int) -> torch.Tensor:
    """``(P, 2)`` top-left corners on a strided grid, the last row and column always included."""

    def axis(n: int, box: int) -> list[int]:
        last = n - box
        return sorted(set(range(0, last + 1, stride)) | {last})

    tops, lefts = axis(height, box_h), axis(width, box_w)
    return torch.tensor([(t, s) for t in tops for s in lefts], dtype=torch.long)


@dataclass(frozen=True, kw_only=True)
class VideoROA(VideoAttack):
    """Rectangle of ``area`` (fraction of the frame) per frame; gray search, then sign-gradient steps."""

    area: float = 0.1
    aspect: float = 1.0
    search: str = "gradient"
    stride: int | None = None
    candidates: int = 10
    per_frame: bool = True
    steps: int = 30
    step_size: float = 16 / 255
    fill: float = 0.5
    quantize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.area <= 1:
            raise ConfigError(f"area must be a fraction of the frame in (0, 1], got {self.area!r}")
        positive(self.aspect, "aspect")
        if self.search not in ("gradient", "exhaustive"):
            raise ConfigError(f"search must be 'gradient' or 'exhaustive', got {self.search!r}")
        if self.stride is not None:
            positive(self.stride, "stride")
        positive(self.candidates, "candidates")
        positive(self.steps, "steps", allow_zero=True)
        positive(self.step_size, "step_size")
        if not 0 <= self.fill <= 1:
            raise ConfigError(f"fill must be a gray level in [0, 1], got {self.fill!r}")

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        target = self.targets(model, x, y, target, generator, counter)
        b, _, t, h, w = x.shape
        bh, bw = rectangle_size(h, w, self.area, self.aspect)
        stride = self.stride or max(1, min(bh, bw) // 2)
        grid = grid_positions(h, w, bh, bw, stride).to(x.device)
        objective = self.objective(y, target)

        def masks(pos: torch.Tensor) -> torch.Tensor:  # pos (B, T, 2) -> (B, 1, T, H, W)
            return box_mask(h, w, pos[..., 0], pos[..., 1], bh, bw).unsqueeze(1).to(x.dtype)

        def gray_loss(pos: torch.Tensor) -> torch.Tensor:
            m = masks(pos)
            with torch.no_grad():
                return objective(forward(model, x * (1 - m) + m * self.fill, counter))

        if self.search == "gradient":
            pos = self._gradient_search(model, x, objective, grid, (bh, bw), gray_loss, counter)
        else:
            pos = self._exhaustive_search(b, t, grid, gray_loss)
        m = masks(pos)
        content = torch.full_like(x, self.fill)

        def compose(p: torch.Tensor) -> torch.Tensor:
            x_adv = x * (1 - m) + m * p
            return quantize8(x_adv, x, straight_through=True) if self.quantize else x_adv

        def update(p: torch.Tensor, g: torch.Tensor, _: int) -> torch.Tensor:
            return (p + self.step_size * g.sign()).clamp(0, 1)

        ascent = Ascent(objective=objective, update=update, compose=compose)
        x_adv, _, _ = until_success(model, content, ascent, y, target, counter, steps=self.steps)
        x_adv = quantize8(x_adv, x) if self.quantize else x_adv  # exact 8-bit values
        artifacts = {"roa_positions": pos.cpu().tolist(), "roa_size": [bh, bw]}
        return final_result(model, x_adv, y, target, counter, artifacts=artifacts)

    def _gradient_search(self, model, x, objective, grid, box, gray_loss, counter) -> torch.Tensor:
        bh, bw = box
        _, _, grad = loss_and_grad(model, x, objective, counter)
        energy = grad.pow(2).sum(1)  # (B, T, H, W)
        b, t = energy.shape[:2]
        window = F.avg_pool2d(energy.flatten(0, 1)[:, None], (bh, bw), stride=1)[
            :, 0
        ]  # (B*T, H-bh+1, W-bw+1)
        scores = window[:, grid[:, 0], grid[:, 1]].view(b, t, -1)  # (B, T, P)
        c = min(self.candidates, grid.shape[0])
        if self.per_frame:
            order = scores.topk(c, dim=2).indices  # (B, T, C)
        else:
            order = scores.sum(1).topk(c, dim=1).indices[:, None, :].expand(b, t, c)
        best_loss = torch.full((b,), -float("inf"), device=x.device)
        best = grid[order[..., 0]]
        for k in range(c):
            pos = grid[order[..., k]]  # (B, T, 2)
            loss = gray_loss(pos)
            better = loss > best_loss
            best = torch.where(better[:, None, None], pos, best)
            best_loss = torch.where(better, loss, best_loss)
        return best

    def _exhaustive_search(self, b: int, t: int, grid, gray_loss) -> torch.Tensor:
        def sweep(base: torch.Tensor, frame: int | None) -> tuple[torch.Tensor, torch.Tensor]:
            best, best_loss = base, torch.full((b,), -float("inf"), device=grid.device)
            for p in grid:
                pos = base.clone()
                if frame is None:
                    pos[:] = p
                else:
                    pos[:, frame] = p
                loss = gray_loss(pos)
                better = loss > best_loss
                best = torch.where(better[:, None, None], pos, best)
                best_loss = torch.where(better, loss, best_loss)
            return best, best_loss

        pos, _ = sweep(grid[0].expand(b, t, 2).clone(), None)
        if self.per_frame:
            for frame in range(t):
                pos, _ = sweep(pos, frame)
        return pos


register("video-roa")(VideoROA)
