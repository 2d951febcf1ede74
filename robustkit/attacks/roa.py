"""Rectangular occlusion attack, ROA (Wu, Tong, Vorobeychik 2020).

Two phases per image. Position: ``exhaustive`` tries a grey rectangle at every position of a strided
grid and keeps the one with the highest loss; ``gradient`` ranks the positions by the squared input
gradient summed inside the rectangle, then tries only the ``top_c`` best. Then unbounded
sign-gradient steps change the pixels inside the rectangle only (values stay in [0, 1]). The output is
quantized to 8 bits; the rectangle's position is returned in the artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..functional.placement import rect_masks
from ..functional.placement import replace as replace_pixels
from ..functional.random import GeneratorLike
from .base import AttackResult, Counter, forward, loss_and_grad, positive, register
from .loop import Ascent, until_success
from .physical import PhysicalAttack, quantize


@dataclass(frozen=True, kw_only=True)
class ROA(PhysicalAttack):
    """Rectangular occlusion; ``height`` / ``width`` as fractions of the image side (or pixels when
    > 1), ``search`` ``gradient`` or ``exhaustive``, grid ``stride`` in pixels, ``top_c`` candidates of
    the gradient search, then ``steps`` sign steps of ``step_size``; ``fill`` the grey of the search."""

    name: ClassVar[str] = "roa"

    height: float = 0.25
    """Rectangle height, a fraction of the image side (pixels when > 1)."""
    width: float = 0.25
    """Rectangle width, a fraction of the image side (pixels when > 1)."""
    search: str = "gradient"
    """``gradient`` (top ``top_c`` positions by squared input gradient, then checked) or ``exhaustive``."""
    stride: int = 2
    """Grid stride of the position search, in pixels."""
    top_c: int = 10
    """Candidates the gradient search checks."""
    steps: int = 50
    """Sign-gradient steps inside the rectangle once it is placed."""
    step_size: float = 0.05
    """Size of each sign step."""
    fill: float = 0.5
    """Grey value of the rectangle during the search."""
    chunk: int = 1024
    """Candidate placements evaluated per forward pass."""
    early_stop: bool = True
    """Stop a sample's steps once it is misclassified."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for what in ("height", "width", "stride", "top_c", "step_size", "chunk"):
            positive(getattr(self, what), what)
        positive(self.steps, "steps", allow_zero=True)
        if self.search not in ("gradient", "exhaustive"):
            raise ConfigError(f"search must be 'gradient' or 'exhaustive', got {self.search!r}")
        if not 0 <= self.fill <= 1:
            raise ConfigError(f"fill must be a grey level in [0, 1], got {self.fill}")

    def rect_size(self, h: int, w: int) -> tuple[int, int]:
        rh = round(self.height * h) if self.height <= 1 else int(self.height)
        rw = round(self.width * w) if self.width <= 1 else int(self.width)
        if not (1 <= rh <= h and 1 <= rw <= w):
            raise ConfigError(f"the rectangle {rh}x{rw} does not fit a {h}x{w} image")
        return rh, rw

    def grid_positions(self, h: int, w: int, rect: tuple[int, int], device) -> torch.Tensor:
        """Top-left corners (P, 2) as (row, col) on the strided grid, always including the last row/col."""
        rows = list(range(0, h - rect[0] + 1, self.stride))
        cols = list(range(0, w - rect[1] + 1, self.stride))
        rows += [h - rect[0]] if rows[-1] != h - rect[0] else []
        cols += [w - rect[1]] if cols[-1] != w - rect[1] else []
        return torch.tensor([(r, c) for r in rows for c in cols], device=device)

    def _occluded_losses(self, model, x, y, target, cand: torch.Tensor, rect, counter) -> torch.Tensor:
        """Loss of a grey rectangle at candidate positions ``cand`` (B, C, 2) -> (B, C)."""
        b, c = cand.shape[:2]
        obj = self.objective
        out = []
        flat = cand.reshape(b * c, 2)
        idx = torch.arange(b, device=x.device).repeat_interleave(c)
        with torch.no_grad():
            for i in range(0, b * c, self.chunk):
                sl = slice(i, i + self.chunk)
                xs = x[idx[sl]]
                m = rect_masks(flat[sl], rect, x.shape[-2:]).to(x)
                occluded = replace_pixels(xs, torch.full_like(xs, self.fill), m)
                ts = None if target is None else target[idx[sl]]
                out.append(obj(y[idx[sl]], ts)(forward(model, occluded, counter)))
        return torch.cat(out).view(b, c)

    def locate(self, model, x, y, target, rect, counter) -> torch.Tensor:
        """The rectangle position per image, (B, 2) (row, col)."""
        b, _, h, w = x.shape
        grid = self.grid_positions(h, w, rect, x.device)
        if self.search == "exhaustive" or grid.shape[0] <= self.top_c:
            cand = grid[None].expand(b, *grid.shape)
        else:
            _, _, grad = loss_and_grad(model, x, self.objective(y, target), counter)
            energy = F.avg_pool2d((grad**2).sum(1, keepdim=True), rect, stride=1)[:, 0]  # (B, h-rh+1, w-rw+1)
            scores = energy[:, grid[:, 0], grid[:, 1]]
            top = scores.topk(min(self.top_c, grid.shape[0]), dim=1).indices
            cand = grid[top]
        losses = self._occluded_losses(model, x, y, target, cand, rect, counter)
        return cand[torch.arange(b, device=x.device), losses.argmax(1)]

    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        target = self.targets(model, x, y, target, generator, counter)
        b, _, h, w = x.shape
        rect = self.rect_size(h, w)
        pos = self.locate(model, x, y, target, rect, counter)
        mask = rect_masks(pos, rect, (h, w)).to(x)

        def update(fill: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            return (fill + self.step_size * grad.sign() * mask).clamp(0, 1)

        def compose(fill: torch.Tensor) -> torch.Tensor:
            return replace_pixels(x, fill, mask)

        ascent = Ascent(objective=self.objective(y, target), update=update, compose=compose)
        best, _, _ = until_success(
            model, torch.full_like(x, self.fill), ascent, y, target, counter, steps=self.steps,
            succeeded=self.succeeded, final_check=False, early_stop=self.early_stop,
        )  # fmt: skip
        artifacts = {
            "position": pos.cpu().tolist(),
            "rect_hw": list(rect),
            "occlusion": (quantize(best[0]) * mask[0]).detach().cpu(),
            "search": self.search,
        }
        return self.finish(
            model,
            best,
            y,
            target,
            counter,
            generator=generator,
            eval_eot=None,
            artifacts=artifacts,
            print_mask=mask,
        )


register("roa")(ROA)
