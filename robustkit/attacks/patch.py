"""Universal adversarial patch (Brown et al. 2017) rendered with kornia warps under EOT.

One patch (circle or square) is optimized with Adam over a training split: every step pastes it into
``n_samples`` random placements of each image of a minibatch at once (random scale, rotation, location
and optional perspective; optional photometric EOT on the composite), averages the loss and updates
the texture. ``fit(model, x_train, y_train, generator=...)`` returns the attack holding the trained
patch; calling it then pastes the patch at a random placement per image (from each image's generator)
and reports the success after 8-bit quantization, the success rate over ``eval_draws`` further random
placements, and a rotation x scale x brightness curve.

Parameter names follow ART's ``AdversarialPatchPyTorch`` where they mean the same thing:
``rotation_max`` (degrees), ``scale_min`` / ``scale_max``, ``distortion_scale_max``, ``learning_rate``,
``max_iter``, ``batch_size``, ``patch_shape``, ``patch_type``, ``targeted``. The patch's size at scale 1
is ``size``, a fraction of the image area; ``scale_min`` / ``scale_max`` multiply its side. With
``size: null`` the scales are, as in ART, the patch side as a fraction of the image's shorter edge.
The texture lives in [0, 1] (ART's ``learning_rate=5.0`` is for 0-255 pixel values).

Placement on the object: with ``placement: object`` the random placements (location, scale, rotation,
distortion) are drawn in the object's own coordinates, the unit square of its box
(``robustkit.functional.placement``): the centre uniform over the object's footprint, the size
``object_size`` (default ``size``) a fraction of the box's area, the rotation in the object's frame.
Each image's object corners map the patch into it (a homography) and its footprint clips it, so every
patch pixel lies on the object and the patch moves, shrinks and tilts with it, in training and in
evaluation. The geometry comes with the data (``objects=`` to ``fit`` and to the call: the built-in
``signs`` know it, a manifest may give corners); ``object`` without it is a ConfigError, ``auto`` places
on the object where the data give its geometry and in the image elsewhere, ``image`` (the default)
always in the image.

Printing: ``tv_weight`` / ``nps_weight`` penalize the texture's total variation and non-printability
(towards ``palette``); an ``eot`` with ``color_transfer`` / ``palette_jitter`` changes the patch's colours
as a printer would, on the patch only; the result reports the patch's printability and the success
with its pixels snapped to the palette (``palette_success``) at the same placements.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from ..eot import PHOTOMETRIC, EvalGrid, per_row
from ..errors import ConfigError
from ..functional.placement import (
    ObjectGeometry,
    object_placement_matrix,
    paste,
    placement_in_image,
    placement_matrix,
    sample_object_placement,
    sample_placement,
    shape_mask,
    side_for_area,
)
from ..functional.random import GeneratorLike, shared, uniform
from ..validate import check_inputs
from .base import AttackResult, Counter, forward, positive, register
from .loop import Ascent, Final, ascend, minibatches
from .physical import PhysicalAttack, Printable, chunked_logits, quantize
from .universal import Universal

log = logging.getLogger(__name__)

# where the patch's random placements are drawn: the image, the object (its corners; an error without
# them), or the object where the data give its geometry and the image elsewhere
PLACEMENTS = ("image", "object", "auto")


@dataclass(frozen=True, kw_only=True)
class UniversalPatch(Universal):
    """The configuration every universal patch shares, on images or clips: its shape (``patch_type``,
    ``size`` a fraction of the ``surface`` area), placement ranges, Adam training over a training split,
    the class a targeted patch pushes to, and the trained ``patch`` (a result, not a recipe key)."""

    surface: ClassVar[str] = "image"

    patch_type: str = "circle"
    size: float | None = 0.1
    rotation_max: float = 22.5
    scale_min: float = 1.0
    scale_max: float = 1.0
    learning_rate: float = 0.1
    max_iter: int = 300
    target_class: int = 0
    patch: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def check_patch(self, *positives: str) -> None:
        """ConfigErrors for a bad shape, size, scale range, training budget or target class; the
        fields named in ``positives`` must be > 0 too."""
        if self.patch_type not in ("circle", "square"):
            raise ConfigError(f"patch_type must be 'circle' or 'square', got {self.patch_type!r}")
        if self.size is not None and not 0 < self.size <= 1:
            raise ConfigError(
                f"size is the fraction of the {self.surface} area the patch covers, in (0, 1]; got {self.size}"
            )
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        for what in ("learning_rate", "max_iter", "batch_size", "train_samples", *positives):
            positive(getattr(self, what), what)
        positive(self.rotation_max, "rotation_max", allow_zero=True)
        if not isinstance(self.target_class, int) or self.target_class < 0:
            raise ConfigError(f"target_class must be a class index >= 0, got {self.target_class!r}")

    def universal_target(self) -> int | None:
        return self.target_class if self.targeted else None

    def training_steps(self) -> int:
        return self.max_iter


@dataclass(frozen=True, kw_only=True)
class Patch(Printable, PhysicalAttack, UniversalPatch):
    """Universal adversarial patch; see the module docstring. ``target_class`` is the class the patch
    pushes every image to when ``targeted``; ``eot`` configures photometric EOT on the composite and
    ``n_samples`` (placements per image per step, default 8)."""

    name: ClassVar[str] = "patch"

    patch_shape: tuple[int, int, int] | None = None
    distortion_scale_max: float = 0.0
    eot: dict | None = None
    targeted: bool = True
    placement: str = "image"
    object_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_patch()
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"patch placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.object_size is not None and not 0 < self.object_size <= 1:
            raise ConfigError(
                f"object_size is the fraction of the object's box the patch covers, in (0, 1]; got {self.object_size}"
            )
        if not 0 <= self.distortion_scale_max < 1:
            raise ConfigError(f"distortion_scale_max must be in [0, 1), got {self.distortion_scale_max}")
        if self.patch_shape is not None and (
            len(self.patch_shape) != 3 or self.patch_shape[1] != self.patch_shape[2]
        ):
            raise ConfigError(f"patch_shape must be (C, S, S), got {self.patch_shape}")
        eot = self.photometric
        extra = set(eot.active) - set(PHOTOMETRIC)
        if extra:
            raise ConfigError(f"patch eot takes photometric transforms only; geometry comes from rotation_max, "
                              f"scale_min/max and distortion_scale_max (got {sorted(extra)})")  # fmt: skip

    @property
    def photometric(self):
        return self.make_eot(self.eot, n_samples=8)

    # ------------------------------------------------------------------ geometry
    def frame(self, objects: ObjectGeometry | None, x: torch.Tensor) -> ObjectGeometry | None:
        """The objects the patch is placed on in the images ``x`` (None: the image), on their device with
        their footprint computed once: ``placement: object`` needs their geometry, ``auto`` uses it when
        the data give it."""
        if self.placement == "image" or (objects is None and self.placement == "auto"):
            return None
        if objects is None:
            raise ConfigError(
                "patch placement 'object' needs the geometry of the object in every image (its corners): "
                "use data that carry it (the built-in signs; a manifest with `objects: corners.json`) or "
                "pass objects= to fit and to the attack; placement 'image' places the patch in image "
                "coordinates, 'auto' on the object where the data know it"
            )
        return objects.to(x.device).with_footprint(tuple(x.shape[-2:]))

    def base_side(self, h: int, w: int, on_object: bool = False) -> float:
        """The patch's rendered side (diameter for a circle) at scale 1: in pixels, or on an object in
        units of the object's box (``object_size``, default ``size``, is then a fraction of its area)."""
        if on_object:
            size = self.size if self.object_size is None else self.object_size
            return 1.0 if size is None else side_for_area(self.patch_type, size, 1, 1)
        if self.size is None:
            return float(min(h, w))
        return side_for_area(self.patch_type, self.size, h, w)

    def texture_shape(self, c: int, h: int, w: int, on_object: bool = False) -> tuple[int, int, int]:
        if self.patch_shape is not None:
            return tuple(self.patch_shape)  # type: ignore[return-value]
        side = self.base_side(h, w, on_object) * (max(h, w) if on_object else 1)
        s = max(4, round(side * self.scale_max))
        return (c, s, s)

    def _render(
        self,
        x: torch.Tensor,
        texture: torch.Tensor,
        generator: GeneratorLike,
        reps: int = 1,
        mask: bool = False,
        objects: ObjectGeometry | None = None,
    ):
        """Paste ``texture`` into ``reps`` random placements of every image (sample-major rows), in image
        coordinates or, given ``objects``, in each object's coordinates, clipped to the object; returns
        the rows and the placements, and with ``mask`` the patch's footprint in each row too."""
        b, _, h, w = x.shape
        rows = x.repeat(reps, 1, 1, 1) if reps > 1 else x
        gens = per_row(generator, rows.shape[0])
        ranges = {"rotation_max": self.rotation_max, "scale_min": self.scale_min, "scale_max": self.scale_max,
                  "distortion_scale_max": self.distortion_scale_max}  # fmt: skip
        on = None if objects is None else objects.repeat(reps)
        if on is None:
            place = sample_placement(
                rows.shape[0], gens, (h, w), self.base_side(h, w), device=x.device, **ranges
            )
        else:
            place = sample_object_placement(on, gens, (h, w), self.base_side(h, w, True), **ranges)
        out, footprint = self.render_at(rows, texture, place, footprint=True, objects=on)
        return (out, place, footprint) if mask else (out, place)

    def render_at(
        self,
        rows: torch.Tensor,
        texture: torch.Tensor,
        place: dict[str, torch.Tensor],
        footprint: bool = False,
        objects: ObjectGeometry | None = None,
    ):
        """Paste ``texture`` at recorded placements (replayable): in image pixels, or given ``objects``
        (one per row) in object coordinates mapped by each object's corners and clipped to the object;
        with ``footprint`` also the warped patch mask (N, 1, H, W)."""
        alpha = shape_mask(self.patch_type, texture.shape[-2], texture.shape[-1], rows.device, rows.dtype)
        where = (
            place["angle"],
            place["side"],
            place["center"],
            tuple(texture.shape[-2:]),
            place.get("distortion"),
        )
        if objects is None:
            out, a = paste(rows, texture.to(rows.dtype), alpha, placement_matrix(*where))
        else:
            objects = objects.to(rows.device, rows.dtype)
            m = object_placement_matrix(objects.corners, *where)
            out, a = paste(
                rows, texture.to(rows.dtype), alpha, m, clip=objects.footprint(tuple(rows.shape[-2:]))
            )
        return (out, a) if footprint else out

    # ------------------------------------------------------------------ training
    def check_training(self, x_train: torch.Tensor) -> None:
        check_inputs(x_train, "x_train", ndims=(4,))

    def _optimize(
        self,
        model,
        x: torch.Tensor,
        y: torch.Tensor,
        g: torch.Generator | None,
        counter: Counter,
        objects: ObjectGeometry | None = None,
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        eot = self.photometric
        reps = eot.n_samples
        objects = self.frame(objects, x)
        shape = self.texture_shape(c, h, w, objects is not None)
        param = uniform(shape, g, x.device, x.dtype).requires_grad_(True)
        alpha = shape_mask(self.patch_type, param.shape[-2], param.shape[-1], x.device, x.dtype)[None]
        opt = torch.optim.Adam([param], lr=self.learning_rate)
        target = torch.full((min(self.batch_size, n),), self.target_class, device=x.device, dtype=torch.long)
        batches = minibatches(n, self.batch_size, g, x.device)

        def update(p: torch.Tensor, grad: torch.Tensor, _: int) -> torch.Tensor:
            param.grad = grad.neg_()  # torch's Adam descends
            opt.step()
            with torch.no_grad():
                return param.clamp_(0, 1)

        def minibatch(_: int) -> Ascent:
            idx = next(batches)
            xb, yb = x[idx], y[idx]
            ob = None if objects is None else objects.select(idx)
            objective = self.capped(self.objective(yb, target[: xb.shape[0]] if self.targeted else None))

            def compose(texture: torch.Tensor) -> torch.Tensor:
                if eot.identity:
                    return self._render(xb, texture, g, reps, objects=ob)[0]
                rows, _, footprint = self._render(xb, texture, g, reps, mask=True, objects=ob)
                return eot.apply(rows, eot.sample(rows.shape[0], g, (h, w), x.device), footprint)

            def regularize(gain: torch.Tensor, texture: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
                return gain - self.print_penalty(texture[None], alpha).sum()

            return Ascent(compose=compose, objective=lambda logits: objective(logits).mean(), update=update,
                          regularize=regularize)  # fmt: skip

        ascend(model, param, minibatch, Final(), steps=self.max_iter, counter=counter)
        return quantize(param.detach())

    # ------------------------------------------------------------------ evaluation
    def run(self, model, x, y, *, target=None, generator: GeneratorLike = None,
            objects: ObjectGeometry | None = None) -> AttackResult:  # fmt: skip
        counter = Counter()
        fitted = self
        on = self.frame(objects, x)
        if self.patch is None:
            log.warning("patch: no trained patch (call fit on a training split first); fitting on this batch")
            fitted = replace(self, patch=self._optimize(model, x, y, shared(generator), counter, on))
        texture = fitted.patch.to(x.device)
        if self.targeted and target is None:
            target = torch.full_like(y, self.target_class)
        if not self.targeted:
            target = None
        x_adv, place = fitted._render(x, texture, generator, objects=on)
        x_adv = quantize(x_adv)
        alpha = shape_mask(self.patch_type, texture.shape[-2], texture.shape[-1], x.device, x.dtype)

        def at_placement(snapped: torch.Tensor) -> torch.Tensor:
            rows = quantize(fitted.render_at(x, snapped[0], place, objects=on))
            return self.succeeded(forward(model, rows, counter), y, target)

        printed = self.print_metrics(texture[None].to(x.dtype), alpha[None], at_placement)
        metrics: dict[str, torch.Tensor] = {
            k: v.expand(x.shape[0]) if k != "palette_success" else v for k, v in printed.items()
        }
        artifacts: dict[str, Any] = {
            "patch": texture.cpu(),
            "patch_mask": alpha.cpu(),
            "palette": self.palette_colors(texture).cpu(),
            "placement": {k: v.cpu().tolist() for k, v in place.items()},
            "placed_on": "image" if on is None else "object",
            "target_class": self.target_class if self.targeted else None,
        }
        if on is not None:  # the exact placements in object coordinates; ``placement`` shows them in pixels
            artifacts["object_placement"] = artifacts["placement"]
            artifacts["placement"] = {
                k: v.cpu().tolist() for k, v in placement_in_image(on.corners, place).items()
            }
            artifacts["object_corners"] = on.corners.cpu().tolist()
        if self.eval_draws:
            rows, extra = fitted._render(x, texture, generator, self.eval_draws, objects=on)
            hits = self.succeeded(chunked_logits(model, quantize(rows), counter), y.repeat(self.eval_draws),
                                  None if target is None else target.repeat(self.eval_draws))  # fmt: skip
            metrics["placement_success_rate"] = hits.view(self.eval_draws, -1).float().mean(0)
            artifacts["eval_placement"] = {k: v.cpu().tolist() for k, v in extra.items()}
        if self.eval_grid:
            artifacts["eot_curve"] = fitted.grid_curve(model, x, y, target, texture, counter, objects=on)
        with torch.no_grad():
            logits = forward(model, x_adv, counter)
        if target is not None:
            metrics["target"] = target.clone()
        return AttackResult(
            x_adv=x_adv, success=self.succeeded(logits, y, target), logits=logits,
            counters=counter.as_dict(), artifacts=artifacts, metrics=metrics,
        )  # fmt: skip

    def grid_curve(
        self,
        model,
        x,
        y,
        target,
        texture,
        counter: Counter,
        grid: EvalGrid | None = None,
        objects: ObjectGeometry | None = None,
    ) -> dict:
        """Success on the fixed grid: patch rotation x patch scale x image brightness, the patch centred
        on the image (on the object, given ``objects``)."""
        grid = grid or EvalGrid()
        b, _, h, w = x.shape
        pts = {k: v.repeat_interleave(b) for k, v in grid.points(x.device).items()}
        p = pts["rotation"].numel() // b
        on = None if objects is None else objects.repeat(p)
        centre = ((w - 1) / 2, (h - 1) / 2) if on is None else (0.5, 0.5)
        place = {
            "angle": pts["rotation"],
            "side": pts["scale"] * self.base_side(h, w, on is not None),
            "center": torch.tensor(centre, device=x.device).expand(p * b, 2),
        }
        rows = self.render_at(x.repeat(p, 1, 1, 1), texture, place, objects=on)
        rows = (rows + pts["brightness"].view(-1, 1, 1, 1)).clamp(0, 1)
        hits = self.succeeded(chunked_logits(model, quantize(rows), counter), y.repeat(p),
                              None if target is None else target.repeat(p))  # fmt: skip
        return grid.curves(hits.view(p, b))


register("patch")(Patch)
