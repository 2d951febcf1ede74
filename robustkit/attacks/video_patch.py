"""Universal adversarial patch on video, with temporal and spatial expectation over transformation.

One patch (square or circle, ``size`` = fraction of the frame area) is optimized with Adam over a
training split, as in Brown et al. 2017, but for clips: the patch is static (the same in every
frame, a printed sticker) or ``dynamic`` (one texture per frame, a screen). Every training step
draws, per clip and ``n_samples`` times,

- spatial EOT, applied through ``kornia.augmentation.VideoSequential`` with one draw per clip
  shared by its frames: rotation (``rotation_max``), scale (``scale_min``..``scale_max``), location
  anywhere the patch fits, and a brightness shift of the patch (``brightness``);
- temporal EOT on the composited clip: each frame dropped with probability ``frame_drop`` (the
  previous frame is shown again, as a camera or decoder that drops frames does) and a shift of the
  whole clip by up to ``max_shift`` frames (edges repeated).

All parameters are drawn from the caller's generator (never kornia's global RNG), handed to kornia
through ``params=`` and returned in the artifacts, so every placement can be replayed.

``fit(model, x_train, y_train, generator=...)`` returns the attack holding the trained patch; calling
it pastes the patch at one random spatial draw per clip (from that clip's generator), rounds to 8
bits, and reports the success. Temporal EOT is applied at evaluation only with ``eval_temporal``
(then ``x_adv`` also carries the dropped / shifted frames).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import kornia.augmentation as K
import torch
from kornia.augmentation.container.params import ParamItem

from ..errors import ConfigError
from ..functional.placement import shape_mask, side_for_area
from ..functional.random import GeneratorLike, shared, uniform
from ..functional.video import check_video, drop_index, gather_frames, quantize8, shift_index
from .base import AttackResult, Counter, positive, register
from .loop import Ascent, Final, ascend, minibatches
from .lp import final_result
from .patch import UniversalPatch
from .video_base import Adam, VideoAttack

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _containers() -> tuple[K.VideoSequential, K.VideoSequential]:
    """The kornia video containers (their own samplers are never used: parameters come from us)."""
    geometric = K.VideoSequential(K.RandomAffine(degrees=0.0, p=1.0), data_format="BCTHW", same_on_frame=True)
    photometric = K.VideoSequential(K.RandomBrightness(p=1.0), data_format="BCTHW", same_on_frame=True)
    return geometric, photometric


def _kornia_params(
    container: K.VideoSequential, values: dict[str, torch.Tensor], frames: int
) -> list[ParamItem]:
    """Per-clip values ``(N, ...)`` -> the per-frame ``ParamItem`` list VideoSequential replays."""
    ((name, _),) = container.named_children()
    n = next(iter(values.values())).shape[0]
    data = {k: v.repeat_interleave(frames, 0) for k, v in values.items()}
    data["batch_prob"] = torch.ones(n * frames, device=next(iter(values.values())).device)
    return [ParamItem(name, data)]


@dataclass(frozen=True, kw_only=True)
class VideoPatch(VideoAttack, UniversalPatch):
    """Universal video patch; see the module docstring. ``target_class`` when ``targeted``."""

    surface: ClassVar[str] = "frame"

    patch_type: str = "square"
    """``square`` or ``circle``."""
    rotation_max: float = 15.0
    """Largest rotation of the patch, in degrees (spatial EOT)."""
    scale_min: float = 0.8
    """Smallest scale of the patch (spatial EOT; up to ``scale_max``)."""
    learning_rate: float = 0.05
    """Adam's learning rate."""
    max_iter: int = 200
    """Training steps."""
    batch_size: int = 32
    """Training clips per step."""
    dynamic: bool = False
    """One texture per frame (a screen) instead of one static patch (a printed sticker)."""
    brightness: float = 0.1
    """Largest brightness shift of the patch (spatial EOT)."""
    frame_drop: float = 0.1
    """Probability that a frame is dropped and the previous one shown again (temporal EOT)."""
    max_shift: int = 1
    """Largest shift of the whole clip in frames (temporal EOT)."""
    eval_temporal: bool = False
    """Apply the temporal EOT at evaluation too."""
    n_samples: int = 1
    """EOT draws per clip and step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_patch("n_samples")
        if not 0 <= self.frame_drop < 1:
            raise ConfigError(f"frame_drop is a probability in [0, 1), got {self.frame_drop}")
        for what in ("brightness", "max_shift"):
            positive(getattr(self, what), what, allow_zero=True)

    def params(self) -> dict[str, Any]:
        """Configuration only: the fitted patch is a result, not a recipe key."""
        return {k: v for k, v in super().params().items() if k != "patch"}

    # ------------------------------------------------------------------ geometry
    def side(self, h: int, w: int) -> float:
        """Rendered side (diameter for a circle) in pixels at scale 1."""
        return side_for_area(self.patch_type, self.size, h, w)

    def texture_shape(self, c: int, t: int, h: int, w: int) -> tuple[int, int, int, int]:
        s = max(2, min(h, w, round(self.side(h, w) * self.scale_max)))
        return (c, t if self.dynamic else 1, s, s)

    def sample(
        self, n: int, frames: int, size: tuple[int, int], generator: GeneratorLike, device
    ) -> dict[str, torch.Tensor]:
        """EOT parameters of ``n`` clips: spatial (angle, scale, translations, brightness) and temporal
        (keep mask, shift). A list of per-clip generators gives every clip its own draw."""
        h, w = size
        u = uniform((n, 6 + frames), generator, device)
        scale = self.scale_min + (self.scale_max - self.scale_min) * u[:, 1]
        side = self.side(h, w) * scale
        room = torch.stack([(w - side).clamp(min=0), (h - side).clamp(min=0)], 1) / 2
        return {
            "angle": (2 * u[:, 0] - 1) * self.rotation_max,
            "scale": scale,
            "translations": (2 * u[:, 2:4] - 1) * room,
            "brightness": (2 * u[:, 4] - 1) * self.brightness,
            "shift": (u[:, 5] * (2 * self.max_shift + 1)).floor().clamp(max=2 * self.max_shift)
            - self.max_shift,
            "keep": u[:, 6:] >= self.frame_drop,
        }

    def render(
        self, x: torch.Tensor, texture: torch.Tensor, eot: dict[str, torch.Tensor], temporal: bool
    ) -> torch.Tensor:
        """Paste ``texture`` ``(C, T or 1, s, s)`` into clips ``x`` with recorded EOT parameters."""
        n, c, t, h, w = x.shape
        s = texture.shape[-1]
        top, left = (h - s) // 2, (w - s) // 2
        alpha = shape_mask(self.patch_type, s, s, x.device, x.dtype)  # (1, s, s)
        layer = torch.cat([texture.to(x.dtype).expand(c, t, s, s), alpha[:, None].expand(1, t, s, s)], 0)
        canvas = torch.zeros(n, c + 1, t, h, w, device=x.device, dtype=x.dtype)
        canvas[:, :, :, top : top + s, left : left + s] = layer
        geometric, photometric = _containers()
        cx, cy = (w - 1) / 2, (h - 1) / 2
        scale = eot["scale"] / self.scale_max  # the texture is stored at the largest scale
        affine = {
            "translations": eot["translations"].to(x.dtype),
            "center": torch.tensor([cx, cy], device=x.device, dtype=x.dtype).expand(n, 2),
            "scale": torch.stack([scale, scale], 1).to(x.dtype),
            "angle": eot["angle"].to(x.dtype),
            "shear_x": torch.zeros(n, device=x.device, dtype=x.dtype),
            "shear_y": torch.zeros(n, device=x.device, dtype=x.dtype),
        }
        canvas = geometric(canvas, params=_kornia_params(geometric, affine, t))
        layer, alpha = canvas[:, :c], canvas[:, c:]
        if self.brightness > 0:
            bright = {"brightness_factor": (1 + eot["brightness"]).to(x.dtype)}
            layer = photometric(layer, params=_kornia_params(photometric, bright, t))
        out = x * (1 - alpha) + layer * alpha
        if temporal:
            index = shift_index(t, eot["shift"]).gather(1, drop_index(eot["keep"]))
            out = gather_frames(out, index)
        return out

    # ------------------------------------------------------------------ training
    def check_training(self, x_train: torch.Tensor) -> None:
        check_video(x_train, "x_train")

    def _optimize(
        self, model, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None, counter: Counter
    ) -> torch.Tensor:
        n, c, t, h, w = x.shape
        param = uniform(self.texture_shape(c, t, h, w), g, x.device, x.dtype)
        adam = Adam(self.learning_rate)
        batches = minibatches(n, self.batch_size, g, x.device)

        def update(p: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            return (p + adam.step(grad)).clamp(0, 1)

        def minibatch(_: int) -> Ascent:
            idx = next(batches)
            xb = x[idx].repeat(self.n_samples, 1, 1, 1, 1)
            yb = y[idx].repeat(self.n_samples)
            objective = self.objective(yb, torch.full_like(yb, self.target_class) if self.targeted else None)
            eot = self.sample(xb.shape[0], t, (h, w), g, x.device)
            return Ascent(
                compose=lambda texture: self.render(xb, texture, eot, temporal=True),
                objective=lambda logits: objective(logits).mean(), update=update,
            )  # fmt: skip

        param = ascend(model, param, minibatch, Final(), steps=self.max_iter, counter=counter)
        return (param * 255).round() / 255

    # ------------------------------------------------------------------ evaluation
    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        fitted = self
        if self.patch is None:
            log.warning(
                "video-patch: no trained patch (call fit on a training split first); fitting on this batch"
            )
            fitted = dataclasses.replace(self, patch=self._optimize(model, x, y, shared(generator), counter))
        texture = fitted.patch.to(x.device)
        if texture.shape[1] not in (1, x.shape[2]):
            raise ConfigError(
                f"the dynamic patch has {texture.shape[1]} frames but the clips have {x.shape[2]}"
            )
        if self.targeted:
            target = target if target is not None else torch.full_like(y, self.target_class)
        else:
            target = None
        eot = self.sample(x.shape[0], x.shape[2], (x.shape[3], x.shape[4]), generator, x.device)
        with torch.no_grad():
            x_adv = quantize8(self.render(x, texture, eot, temporal=self.eval_temporal).clamp(0, 1), x)
        artifacts: dict[str, Any] = {
            "patch": texture[:, 0].cpu(),
            "patch_frames": texture.shape[1],
            "eot_params": {k: v.cpu().tolist() for k, v in eot.items()},
            "target_class": self.target_class if self.targeted else None,
        }
        return final_result(model, x_adv, y, target, counter, artifacts=artifacts)


register("video-patch")(VideoPatch)
