"""Adversarial eyeglass frames (Sharif, Bhagavatula, Bauer, Reiter 2016).

A frame-shaped mask sits over the eyes (the canonical position of aligned faces, or eyes detected
with OpenCV's Haar cascades for real photos). The pixels under the frame are *replaced* by the frame's
texture, not perturbed. Each image's frame starts from the worst of a few solid colours (the one with
the highest loss); then normalized-gradient steps with momentum change the texture inside the mask
only, rounding it to 8 bits after every step. Total-variation and non-printability penalties (towards
the attack's ``palette``) keep it smooth and printable; ``colors: [palette]`` starts from the worst
printable colour instead of the solid colours. Print-aware EOT (``eot: {color_transfer: ...,
palette_jitter: ...}``) changes the frame's colours as a printer would. Untargeted = dodging, targeted
= impersonation.

Pose EOT (``pose: {rotation: 5, scale: 0.05, translate: 2, perspective: 0, n_samples: 4}``; ``{}`` or
``true`` for these defaults): glasses never sit twice the same way, so every step also moves the frame
— its mask and its texture together, over the unchanged face — by ``n_samples`` small random pose
changes (``robustkit.eot.Pose``: in-plane rotation and scale about the frame's centre, a shift in
pixels, an optional slight tilt) and averages the loss over them (before any image ``eot``). Every
frame, posed or not, reports ``pose_success_rate``: the fraction of ``eval_draws`` random pose changes
(the attack's ``pose``, or the default small ranges) under which the 8-bit image still succeeds, with
the draws recorded in ``artifacts['eval_pose_params']`` for replay.

``universal: true`` optimizes one frame for many images: ``fit(model, x_train, y_train)`` uses the
training images of ``identity`` (all images when ``null``) and returns the attack holding the frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from ..eot import Pose, make_pose, mean_over_draws
from ..errors import ConfigError
from ..functional.placement import replace as replace_pixels
from ..functional.random import GeneratorLike, shared
from ..validate import check_inputs, check_labels
from .base import AttackResult, Counter, forward, register
from .loop import Ascent, Final, ascend
from .lp import check_fields
from .physical import PhysicalAttack, Printable, chunked_logits, quantize

log = logging.getLogger(__name__)

SOLID_COLORS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.2, 0.85),
    "yellow": (0.95, 0.85, 0.1),
    "brown": (0.45, 0.28, 0.12),
    "gray": (0.5, 0.5, 0.5),
}


@dataclass(frozen=True, kw_only=True)
class Eyeglass(Printable, PhysicalAttack):
    """Eyeglass-frame attack; see the module docstring.

    ``step_size`` is the largest change of one pixel per step; ``momentum`` the decay of the
    accumulated normalized gradient; ``colors`` the solid colours tried first (names, [r, g, b]
    triples, or ``palette``: every printable colour); ``tv_weight`` / ``nps_weight`` the penalties; ``eyes`` is ``canonical`` or ``detect``; ``mask`` is ``eyeglass`` (the
    generated frame) or a path to a mask image drawn for the canonical eye position; ``eot`` optional
    EOT (whole image) for frames robust to pose and light; ``pose`` EOT over small pose changes of the
    frame on the face (see the module docstring).
    """

    name: ClassVar[str] = "eyeglass"

    steps: int = 100
    step_size: float = 16 / 255
    momentum: float = 0.9
    colors: tuple[str, ...] = ("black", "white", "red", "green", "blue", "yellow", "brown", "gray")
    eyes: str = "canonical"
    cascade_dir: str | None = None
    mask: str = "eyeglass"
    eot: dict | None = None
    pose: dict | bool | None = None
    early_stop: bool = True
    universal: bool = False
    identity: int | None = None
    train_samples: int = 256
    batch_size: int = 32
    texture: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, above_zero=("steps", "step_size"))
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.eyes not in ("canonical", "detect"):
            raise ConfigError(
                f"eyes must be 'canonical' (aligned faces) or 'detect' (Haar cascades), got {self.eyes!r}"
            )
        if not self.colors:
            raise ConfigError("colors must name at least one solid colour to start from")
        for c in self.colors:
            if isinstance(c, str) and c not in SOLID_COLORS and c != "palette":
                raise ConfigError(
                    f"unknown frame colour {c!r}; use one of {', '.join(SOLID_COLORS)}, 'palette' (every "
                    "printable colour) or an [r, g, b] triple"
                )
        if self.universal and self.eyes != "canonical":
            raise ConfigError("a universal frame needs aligned faces: use eyes='canonical'")
        self.make_eot(self.eot)
        make_pose(self.pose, "eyeglass pose")

    # ------------------------------------------------------------------ pieces
    @property
    def poses(self) -> Pose | None:
        """The pose EOT of the optimization (None: the frame stays where the mask puts it)."""
        return make_pose(self.pose, "eyeglass pose")

    @property
    def eval_pose(self) -> Pose:
        """The random pose changes ``pose_success_rate`` is measured under: the optimization's pose
        distribution, or the default small one (a frame optimized without pose EOT is evaluated too)."""
        return self.poses or Pose()

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The frame mask per image, (B, 1, H, W)."""
        from ..data.masks import resolve_mask

        b, _, h, w = x.shape
        if self.eyes == "detect":
            from ..data.facedetect import detect_eyes_batch, place_eyeglass

            eyes, _ = detect_eyes_batch(x, cascade_dir=self.cascade_dir)
            frame = resolve_mask(self.mask, min(h, w), "eyeglass")
            return place_eyeglass(eyes, (h, w), frame).to(x.dtype)
        if h != w:
            raise ConfigError(
                f"canonical eyeglass placement needs square aligned faces, got {h}x{w}; use eyes='detect'"
            )
        return resolve_mask(self.mask, h, "eyeglass").to(x)[None].expand(b, 1, h, w)

    def _palette(self, x: torch.Tensor) -> torch.Tensor:
        """The starting colours (K, 3): the solid colours named, triples, and the printable palette."""
        parts = [
            self.palette_colors(x)
            if c == "palette"
            else torch.tensor(
                [SOLID_COLORS[c] if isinstance(c, str) else tuple(c)], device=x.device, dtype=x.dtype
            )
            for c in self.colors
        ]
        return torch.cat(parts)

    def ascent(self, x, y, target, mask, eot, g, update, universal: bool = False) -> Ascent:
        """The frame's ascent on images ``x``: the texture pasted under the mask, seen through EOT
        draws; the loss averaged over the draws, less the penalties. ``universal``: one texture for
        all images, their mean loss."""
        objective = self.capped(self.objective(y, target))

        def gain(logits: torch.Tensor) -> torch.Tensor:
            per_image = mean_over_draws(objective(logits), x.shape[0])
            return per_image.mean() if universal else per_image

        def regularize(gain: torch.Tensor, tex: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            if universal:
                return gain - self.print_penalty(tex, mask[:1]).sum()
            return gain - self.print_penalty(tex, mask)

        pose = self.poses

        def view(adv: torch.Tensor) -> torch.Tensor:
            rows, worn = adv, mask
            if pose is not None:  # the frame (its colours and its mask) moves on the face, per draw
                rows, worn, _ = pose.draw(x, adv - x * (1 - mask), mask, g)
            return rows if eot.identity else eot.draw(rows, g, mask=worn)[0]

        return Ascent(
            compose=lambda tex: replace_pixels(x, tex.expand_as(x) if universal else tex, mask),
            view=None if eot.identity and pose is None else view,
            objective=gain, regularize=regularize, update=update,
        )  # fmt: skip

    def color_losses(self, model, x, y, target, mask, counter) -> torch.Tensor:
        """Loss of every solid colour on every image, (K, B)."""
        obj = self.objective(y, target)
        with torch.no_grad():
            return torch.stack([
                obj(forward(model, replace_pixels(x, c.view(1, -1, 1, 1).expand_as(x), mask), counter))
                for c in self._palette(x)
            ])  # fmt: skip

    def initial(self, model, x, y, target, mask, counter) -> torch.Tensor:
        """Per image, the solid colour with the highest loss, as a texture (B, 3, H, W)."""
        pick = self.color_losses(model, x, y, target, mask, counter).argmax(0)
        return self._palette(x)[pick].view(-1, x.shape[1], 1, 1).expand_as(x).clone()

    def _step(self, tex, grad, velocity, mask):
        """Momentum on L1-normalized gradients, a max-norm step inside the mask, 8-bit rounding."""
        g = grad * mask
        g = g / g.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        velocity = self.momentum * velocity + g
        scale = velocity.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        tex = quantize(tex + self.step_size * velocity / scale)
        return tex, velocity

    # ------------------------------------------------------------------ per image
    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None) -> AttackResult:
        counter = Counter()
        target = self.targets(model, x, y, target, generator, counter)
        mask = self.masks(x)
        eot = self.make_eot(self.eot)
        if self.texture is not None:
            best = self.texture.to(x).expand_as(x)
        else:
            best = self.optimized(model, x, y, target, mask, eot, generator, counter)
        result = self.finish(model, replace_pixels(x, best, mask), y, target, counter, generator=generator,
                             eval_eot=eot.heldout(), artifacts=self._artifacts(best, mask),
                             print_mask=mask, artefact=best)  # fmt: skip
        return self.posed(model, result, x, y, target, best, mask, generator, counter)

    def optimized(self, model, x, y, target, mask, eot, generator, counter: Counter) -> torch.Tensor:
        """The frame's texture per image, optimized from the best solid colour."""
        tex = self.initial(model, x, y, target, mask, counter)
        velocity = torch.zeros_like(x)

        def update(t: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            nonlocal velocity
            t, velocity = self._step(t, grad, velocity, mask)
            return t

        ascent = self.ascent(x, y, target, mask, eot, shared(generator), update)

        def stop(_: int, t: torch.Tensor) -> bool:  # every image already fooled by its frame
            with torch.no_grad():
                logits = forward(model, quantize(replace_pixels(x, t, mask)), counter)
            return bool(self.succeeded(logits, y, target).all())

        keep = self.keep_best(tex.clone(), lambda t, _: self.print_penalty(t, mask),
                              final=lambda t: ascent.value(model, t, counter)[1],
                              stop=stop if self.early_stop and ascent.view is None and self.kappa is None else None)  # fmt: skip
        return ascend(model, tex, ascent, keep, steps=self.steps, counter=counter)

    def posed(self, model, result: AttackResult, x, y, target, tex, mask, generator, counter) -> AttackResult:
        """Adds ``pose_success_rate``: per image, the fraction of ``eval_draws`` random pose changes of
        the frame (``eval_pose``; drawn after the held-out EOT draws, from the same generators) under
        which the 8-bit image still fools the model; the draws in ``artifacts['eval_pose_params']``."""
        if not self.eval_draws:
            return result
        layer = quantize(tex.detach()).expand_as(x) * mask
        rows, _, params = self.eval_pose.draw(x, layer, mask, generator, self.eval_draws)
        hits = self.succeeded(chunked_logits(model, quantize(rows), counter), y.repeat(self.eval_draws),
                              None if target is None else target.repeat(self.eval_draws))  # fmt: skip
        result.metrics["pose_success_rate"] = hits.view(self.eval_draws, -1).float().mean(0)
        result.artifacts["eval_pose_params"] = {k: v.cpu().tolist() for k, v in params.items()}
        result.counters = counter.as_dict()
        return result

    def _artifacts(self, tex: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        return {"texture": (tex[0] * mask[0]).detach().cpu(), "mask": mask[0].detach().cpu(),
                "textures": (tex * mask).detach().cpu()}  # fmt: skip

    # ------------------------------------------------------------------ universal
    def fit(
        self, model, x_train: torch.Tensor, y_train: torch.Tensor, *, generator: GeneratorLike = None
    ) -> Eyeglass:
        """One frame for the training images of ``identity`` (or all); only when ``universal``."""
        if not self.universal:
            return self
        check_inputs(x_train, "x_train", ndims=(4,))
        check_labels(y_train, x_train.shape[0], "y_train")
        if self.identity is not None:
            keep = y_train == self.identity
            x_train, y_train = x_train[keep], y_train[keep]
        if self.targeted and isinstance(self.target_mode, int):
            keep = y_train != self.target_mode
            x_train, y_train = x_train[keep], y_train[keep]
        if x_train.shape[0] == 0:
            raise ConfigError(f"eyeglass: no training image of identity {self.identity}")
        x_train, y_train = x_train[: self.train_samples], y_train[: self.train_samples]
        g = shared(generator)
        counter = Counter()
        with self.guarded(model):
            target = self.targets(model, x_train, y_train, None, g, counter)
            if target is not None and not isinstance(self.target_mode, int):
                raise ConfigError(
                    "a universal impersonation frame needs one target: set target_mode to a class index"
                )
            mask = self.masks(x_train)
            eot = self.make_eot(self.eot)
            pick = self.color_losses(model, x_train, y_train, target, mask, counter).mean(1).argmax()
            tex = self._palette(x_train)[pick].view(1, -1, 1, 1).expand_as(x_train[:1]).clone()
            velocity = torch.zeros_like(tex)
            n = x_train.shape[0]

            def update(t: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
                nonlocal velocity
                t, velocity = self._step(t, grad, velocity, mask[:1])
                return t

            def minibatch(_: int) -> Ascent:
                idx = torch.randperm(n, generator=g)[: self.batch_size].to(x_train.device)
                tb = target[idx] if target is not None else None
                return self.ascent(x_train[idx], y_train[idx], tb, mask[idx], eot, g, update, universal=True)

            tex = ascend(model, tex, minibatch, Final(), steps=self.steps, counter=counter)
        return replace(self, texture=tex.detach())


register("eyeglass")(Eyeglass)
