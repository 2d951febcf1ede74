"""Expectation over transformation (Athalye et al. 2018) on ``kornia.augmentation.AugmentationSequential``.

An :class:`EOT` is configuration: which transformations, over which ranges, and how many draws per
optimization step. Sampling is separated from applying (as in kornia's own augmentation base): the
parameters of every draw are generated here from a ``torch.Generator`` (kornia's own sampler would use
the global RNG), handed to the kornia container through ``params=`` and recorded, so any draw is
replayed bit for bit from :class:`EOTParams`.

Print stage (print-aware EOT), applied first and, given a mask, to the printed artefact only: a random
affine colour matrix (``color_transfer``: the printer-and-camera colour transfer) and a random shift of
each colour of the printable ``palette`` (``palette_jitter``: each ink prints a little off), spread to
the pixels near that colour. Its parameters are recorded and replayed like the others (``print``).

Geometric transforms: rotation, scale, translation (one ``RandomAffine``) and perspective.
Photometric: brightness (additive), contrast, gamma, hue, saturation, Gaussian noise, Gaussian blur and
JPEG (kornia's ``RandomJPEG`` runs the differentiable JPEG codec). Every module is built with ``p=1.0``:
a configured transform always applies; a transform whose range is zero is left out.

:class:`Pose`: small pose changes of an artefact worn on the object (an eyeglass frame on a face), its
colours and mask moved together over the unchanged image, drawn and replayed the same way.

``n_samples`` draws are evaluated for the whole batch at once: :meth:`EOT.draw` repeats the batch
sample-major (draw ``j`` of image ``i`` sits at row ``j * B + i``) and :func:`mean_over_draws` averages a
per-row loss back to ``(B,)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation.container.params import ParamItem

from .errors import ConfigError
from .functional.palette import load_palette
from .functional.placement import centroid, pose_matrix, repose
from .functional.printing import color_transfer, palette_shift
from .functional.random import GeneratorLike, shared, uniform
from .registry import check_keys

GEOMETRIC = ("affine", "perspective")
PHOTOMETRIC = ("brightness", "contrast", "gamma", "hue", "saturation", "noise", "blur", "jpeg")
PRINT = "print"  # the print stage: colour transfer and palette jitter (not a kornia module)


def _pair(value: Any, what: str) -> tuple[float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ConfigError(f"{what} must be [low, high] with low <= high, got {list(value)}")
        return lo, hi
    raise ConfigError(f"{what} must be a number or a [low, high] pair, got {value!r}")


class Draw:
    """Uniform draws for ``n`` rows of spatial ``size`` from the row generators (``EOT.sample``)."""

    def __init__(self, n: int, generator: GeneratorLike, size: tuple[int, int], device: torch.device) -> None:
        self.n, self.generator, (self.h, self.w), self.device = n, generator, size, device

    def u(self, *shape: int) -> torch.Tensor:
        return uniform((self.n, *shape), self.generator, self.device, torch.float32)

    def between(self, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self.u()


@dataclass(frozen=True)
class Transform:
    """One EOT transform: the ``EOT`` fields that configure it (``off``: their values when it is off,
    the first one deciding), its kornia ``module`` (``p=1.0``), its ``sample``r of recorded parameters
    (named as kornia names them) and, for replay, the kornia parameters it derives from them
    (``replay(data, x, eot)``, default: none)."""

    off: Mapping[str, Any]
    module: Callable[[EOT], torch.nn.Module]
    sample: Callable[[EOT, Draw], dict[str, torch.Tensor]]
    replay: Callable[[dict[str, torch.Tensor], torch.Tensor, EOT], dict[str, torch.Tensor]] | None = None

    def active(self, eot: EOT) -> bool:
        return any(getattr(eot, k) != v for k, v in self.off.items())


def _factor(name: str, kornia_name: str, module: Callable[..., torch.nn.Module]) -> Transform:
    """A photometric factor drawn from [1 - v, 1 + v] for the field ``name``."""
    return Transform(
        off={name: 0.0},
        module=lambda e: module(**{name: (1 - getattr(e, name), 1 + getattr(e, name))}, p=1.0),
        sample=lambda e, d: {kornia_name: d.between(1 - getattr(e, name), 1 + getattr(e, name))},
    )


def _affine(e: EOT, d: Draw) -> dict[str, torch.Tensor]:
    s = d.between(*e.scale)
    return {
        "angle": d.between(-e.rotation, e.rotation),
        "scale": torch.stack([s, s], 1),
        "translations": (d.u(2) * 2 - 1) * e.translate * torch.tensor([d.w, d.h], device=d.device),
    }


def _affine_replay(data: dict[str, torch.Tensor], x: torch.Tensor, e: EOT) -> dict[str, torch.Tensor]:
    n, _, h, w = x.shape
    center = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=x.device).expand(n, 2).clone()
    return data | {"center": center, "shear_x": torch.zeros(n, device=x.device),
                   "shear_y": torch.zeros(n, device=x.device)}  # fmt: skip


def _perspective(e: EOT, d: Draw) -> dict[str, torch.Tensor]:
    start = _corners(d.h, d.w, d.device).expand(d.n, 4, 2)
    reach = torch.tensor([e.perspective * (d.w - 1) / 2, e.perspective * (d.h - 1) / 2], device=d.device)
    inward = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float32, device=d.device)
    return {"start_points": start.clone(), "end_points": start + inward * d.u(4, 2) * reach}


def _noise_replay(data: dict[str, torch.Tensor], x: torch.Tensor, e: EOT) -> dict[str, torch.Tensor]:
    return {"gaussian_noise": _noise(data["seed"], tuple(x.shape[1:]), e.noise, x.device, x.dtype)}


# The transforms in application order: geometric first, then photometric.
TRANSFORMS: dict[str, Transform] = {
    "affine": Transform(
        off={"rotation": 0.0, "scale": (1.0, 1.0), "translate": 0.0},
        module=lambda e: K.RandomAffine(
            degrees=e.rotation,
            translate=(e.translate, e.translate),
            scale=e.scale,
            padding_mode=e.padding_mode,
            p=1.0,
        ),  # fmt: skip
        sample=_affine,
        replay=_affine_replay,
    ),
    "perspective": Transform(
        off={"perspective": 0.0},
        module=lambda e: K.RandomPerspective(distortion_scale=e.perspective, p=1.0),
        sample=_perspective,
    ),
    "brightness": _factor("brightness", "brightness_factor", K.RandomBrightness),
    "contrast": _factor("contrast", "contrast_factor", K.RandomContrast),
    "gamma": Transform(
        off={"gamma": 0.0},
        module=lambda e: K.RandomGamma(gamma=(1 - e.gamma, 1 + e.gamma), p=1.0),
        sample=lambda e, d: {
            "gamma_factor": d.between(1 - e.gamma, 1 + e.gamma),
            "gain_factor": torch.ones(d.n, device=d.device),
        },  # fmt: skip
    ),
    "hue": Transform(
        off={"hue": 0.0},
        module=lambda e: K.RandomHue(hue=(-e.hue, e.hue), p=1.0),
        sample=lambda e, d: {"hue_factor": d.between(-e.hue, e.hue)},
    ),
    "saturation": _factor("saturation", "saturation_factor", K.RandomSaturation),
    "noise": Transform(
        off={"noise": 0.0},
        module=lambda e: K.RandomGaussianNoise(std=e.noise, p=1.0),
        sample=lambda e, d: {"seed": (d.u() * 2**31).long()},
        replay=_noise_replay,
    ),
    "blur": Transform(
        off={"blur": 0.0},
        module=lambda e: K.RandomGaussianBlur(
            kernel_size=(e.blur_kernel(),) * 2, sigma=(0.1, e.blur), border_type="reflect", p=1.0
        ),  # fmt: skip
        sample=lambda e, d: {"sigma": d.between(0.1, e.blur)},
    ),
    "jpeg": Transform(
        off={"jpeg": None},
        module=lambda e: K.RandomJPEG(jpeg_quality=e.jpeg, p=1.0),
        sample=lambda e, d: {"jpeg_quality": d.between(*e.jpeg)},
    ),
}
ORDER = tuple(TRANSFORMS)


@dataclass
class EOTParams:
    """The sampled parameters of ``n`` draws: ``values[transform][key]`` is a tensor with ``n`` rows.

    Keys follow kornia's parameter names (``angle``, ``scale``, ``translations``, ``start_points``,
    ``brightness_factor`` ...), except Gaussian noise, recorded as one int64 seed per draw.
    """

    n: int
    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def select(self, rows: torch.Tensor | Sequence[int]) -> EOTParams:
        idx = torch.as_tensor(rows, dtype=torch.long)
        out = {t: {k: v[idx.to(v.device)] for k, v in d.items()} for t, d in self.values.items()}
        return EOTParams(n=int(idx.numel()), values=out)

    def as_artifact(self) -> dict[str, Any]:
        """Plain lists, JSON-able; :meth:`from_artifact` turns them back into the same tensors."""
        return {
            "n": self.n,
            "values": {
                t: {
                    k: {"dtype": str(v.dtype).removeprefix("torch."), "data": v.cpu().tolist()}
                    for k, v in d.items()
                }
                for t, d in self.values.items()
            },
        }

    @staticmethod
    def from_artifact(blob: Mapping[str, Any], device: torch.device | str = "cpu") -> EOTParams:
        values = {
            t: {
                k: torch.tensor(v["data"], dtype=getattr(torch, v["dtype"]), device=device)
                for k, v in d.items()
            }
            for t, d in blob["values"].items()
        }
        return EOTParams(n=int(blob["n"]), values=values)


@dataclass(frozen=True, kw_only=True)
class EOT:
    """A distribution of physical-world transformations and the number of draws per step.

    Ranges: ``rotation`` max degrees (uniform in [-r, r]); ``scale`` [low, high] zoom factor;
    ``translate`` max shift as a fraction of width / height; ``perspective`` corner distortion in [0, 1);
    ``brightness`` additive shift in [-b, b]; ``contrast``, ``gamma``, ``saturation`` factors in
    [1-v, 1+v]; ``hue`` shift in [-h, h] turns of the hue circle; ``noise`` Gaussian std;
    ``blur`` max Gaussian sigma in pixels; ``jpeg`` [low, high] JPEG quality (``None`` = off).
    Print stage: ``color_transfer`` the largest deviation of each entry of the colour matrix from the
    identity and of each colour offset; ``palette_jitter`` the largest shift of each channel of each
    colour of ``palette`` (a built-in palette name or a palette file; ``None``: the default palette).
    """

    rotation: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    perspective: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    jpeg: tuple[float, float] | None = None
    color_transfer: float = 0.0
    palette_jitter: float = 0.0
    palette: str | None = None
    n_samples: int = 1
    padding_mode: str = "border"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _pair(self.scale, "eot.scale"))
        if self.jpeg is not None:
            object.__setattr__(self, "jpeg", _pair(self.jpeg, "eot.jpeg"))
            if not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100:
                raise ConfigError(f"eot.jpeg quality must lie in [1, 100], got {list(self.jpeg)}")
        for name in ("rotation", "translate", "perspective", "brightness", "contrast", "gamma", "hue",
                     "saturation", "noise", "blur", "color_transfer", "palette_jitter"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"eot.{name} must be a number >= 0, got {value!r}")
        if self.scale[0] <= 0:
            raise ConfigError(f"eot.scale must be positive, got {list(self.scale)}")
        if self.perspective >= 1:
            raise ConfigError(f"eot.perspective must be in [0, 1), got {self.perspective}")
        for name in ("contrast", "gamma", "saturation"):
            if getattr(self, name) >= 1:
                raise ConfigError(
                    f"eot.{name} must be < 1 (factors are drawn from [1-v, 1+v]), got {getattr(self, name)}"
                )
        if self.hue > 0.5:
            raise ConfigError(f"eot.hue must be <= 0.5 turns of the hue circle, got {self.hue}")
        if self.blur and self.blur < 0.1:
            raise ConfigError(
                f"eot.blur is the largest Gaussian sigma in pixels; use 0 (off) or >= 0.1, got {self.blur}"
            )
        if self.color_transfer > 0.5 or self.palette_jitter > 0.5:
            raise ConfigError(
                "eot.color_transfer and eot.palette_jitter are colour changes in [0, 0.5], got "
                f"{self.color_transfer} and {self.palette_jitter}"
            )
        if self.palette_jitter:
            self.print_palette  # noqa: B018 - a bad palette fails when the recipe loads, not mid-run
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise ConfigError(
                f"eot.padding_mode must be zeros, border or reflection, got {self.padding_mode!r}"
            )
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ConfigError(f"eot.n_samples must be an integer >= 1, got {self.n_samples!r}")

    # ----------------------------------------------------------------- configuration
    @cached_property
    def active(self) -> tuple[str, ...]:
        """The transforms that apply, in application order (computed once: every step replays them)."""
        return tuple(name for name, t in TRANSFORMS.items() if t.active(self))

    @property
    def printing(self) -> bool:
        """Whether the print stage (colour transfer, palette jitter) applies."""
        return bool(self.color_transfer or self.palette_jitter)

    @cached_property
    def print_palette(self) -> torch.Tensor:
        return load_palette(self.palette)

    @property
    def identity(self) -> bool:
        return not self.active and not self.printing

    def only(self, kinds: Iterable[str]) -> EOT:
        """The same distribution restricted to some transforms (``GEOMETRIC`` / ``PHOTOMETRIC`` /
        ``PRINT``)."""
        keep = set(kinds)
        off = {k: v for name, t in TRANSFORMS.items() if name not in keep for k, v in t.off.items()}
        if PRINT not in keep:
            off |= {"color_transfer": 0.0, "palette_jitter": 0.0}
        return dataclasses.replace(self, **off)

    def heldout(self, widen: float = 1.25) -> EOT:
        """A held-out evaluation distribution: every range widened by ``widen`` (to be sampled with a
        generator independent of the one used for optimization)."""
        w = float(widen)

        def cap(v: float, top: float) -> float:
            return min(v * w, top)

        lo, hi = self.scale
        mid = 1.0
        return dataclasses.replace(
            self,
            rotation=self.rotation * w, translate=cap(self.translate, 0.5), perspective=cap(self.perspective, 0.9),
            scale=(max(mid - (mid - lo) * w, 0.05), mid + (hi - mid) * w),
            brightness=self.brightness * w, contrast=cap(self.contrast, 0.95), gamma=cap(self.gamma, 0.95),
            hue=cap(self.hue, 0.5), saturation=cap(self.saturation, 0.95), noise=self.noise * w, blur=self.blur * w,
            jpeg=None if self.jpeg is None else (max(1.0, 100 - (100 - self.jpeg[0]) * w), self.jpeg[1]),
            color_transfer=cap(self.color_transfer, 0.5), palette_jitter=cap(self.palette_jitter, 0.5),
        )  # fmt: skip

    def blur_kernel(self) -> int:
        return 2 * max(1, math.ceil(2.0 * self.blur)) + 1

    @cached_property
    def container(self) -> K.AugmentationSequential:
        """The kornia container, one ``p=1.0`` module per active transform (never sampled from directly)."""
        return K.AugmentationSequential(
            *[TRANSFORMS[k].module(self) for k in self.active], data_keys=["input"]
        )

    # ----------------------------------------------------------------- sampling
    def sample(
        self, n: int, generator: GeneratorLike, size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> EOTParams:
        """Draw parameters for ``n`` images of spatial ``size`` (H, W) from ``generator``.

        A list of per-sample generators whose length divides ``n`` draws row ``r`` from generator
        ``r % len(list)`` (sample-major rows), so each image's draws do not depend on its batch.
        """
        draw = Draw(n, per_row(generator, n), size, torch.device(device))
        values = {kind: TRANSFORMS[kind].sample(self, draw) for kind in self.active}
        if self.printing:
            values[PRINT] = self._sample_print(draw)
        return EOTParams(n=n, values=values)

    def _sample_print(self, draw: Draw) -> dict[str, torch.Tensor]:
        c, j, p = self.color_transfer, self.palette_jitter, self.print_palette.shape[0]
        eye = torch.eye(3, device=draw.device)
        return {
            "matrix": eye + (draw.u(3, 3) * 2 - 1) * c,
            "bias": (draw.u(3) * 2 - 1) * c,
            "palette_offsets": (draw.u(p, 3) * 2 - 1) * j,
        }

    def print_stage(
        self, x: torch.Tensor, params: EOTParams, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The recorded print-stage colour changes applied to ``x`` (under ``mask`` when given): the
        palette jitter first (the inks), then the colour transfer."""
        if not self.printing:
            return x
        if PRINT not in params.values:
            raise ConfigError(
                "the recorded EOT parameters lack 'print'; they were sampled from another distribution"
            )
        v = params.values[PRINT]
        if self.palette_jitter:
            x = palette_shift(x, self.print_palette, v["palette_offsets"], mask)
        if self.color_transfer:
            x = color_transfer(x, v["matrix"], v["bias"], mask)
        return x

    # ----------------------------------------------------------------- applying
    def _kornia_params(self, params: EOTParams, x: torch.Tensor) -> list[ParamItem]:
        n, c, h, w = x.shape
        items = []
        shape = torch.tensor([n, c, h, w], dtype=torch.long)
        for (name, _), kind in zip(self.container.named_children(), self.active, strict=True):
            if kind not in params.values:
                raise ConfigError(
                    f"the recorded EOT parameters lack '{kind}'; they were sampled from another distribution"
                )
            data = dict(params.values[kind])
            replay = TRANSFORMS[kind].replay
            if replay is not None:
                data = replay(data, x, self)
            data["batch_prob"] = torch.ones(n, device=x.device)
            data["forward_input_shape"] = shape
            items.append(ParamItem(name, data))
        return items

    def apply(self, x: torch.Tensor, params: EOTParams, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Transform ``x`` (N, C, H, W) with recorded parameters of ``N`` draws; differentiable in ``x``.
        The print stage changes the pixels under ``mask`` (N or 1, 1, H, W) only, when given."""
        if self.identity:
            return x
        if params.n != x.shape[0]:
            raise ConfigError(f"EOT parameters hold {params.n} draws but the batch has {x.shape[0]} images")
        x = self.print_stage(x, params, mask)
        return self.container(x, params=self._kornia_params(params, x)) if self.active else x

    def draw(
        self,
        x: torch.Tensor,
        generator: GeneratorLike,
        n_samples: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EOTParams]:
        """``n_samples`` transformed copies of the batch, sample-major, and their parameters; ``mask``
        (B or 1, 1, H, W): the printed artefact's pixels, which the print stage changes."""
        n = self.n_samples if n_samples is None else n_samples
        rep = x.repeat(n, *([1] * (x.ndim - 1)))
        if mask is not None and mask.shape[0] not in (1, rep.shape[0]):
            mask = mask.repeat(n, *([1] * (mask.ndim - 1)))
        params = self.sample(rep.shape[0], generator, (x.shape[-2], x.shape[-1]), x.device)
        return self.apply(rep, params, mask), params


@dataclass(frozen=True, kw_only=True)
class Pose:
    """Small pose changes of an artefact worn on the object (eyeglass frames on a face), one per EOT
    draw: an in-plane rotation in [-rotation, rotation] degrees and a scale in [1 - scale, 1 + scale]
    about the artefact's centre, a shift of up to ``translate`` pixels along each axis, and with
    ``perspective`` > 0 the image corners moved by up to that fraction of its half size (a slight tilt).
    The artefact (its colours and its mask together) moves; the image under it stays (``repose``).

    ``n_samples`` draws per optimization step; the parameters of every draw come from the generators
    (a per-sample list cycled over sample-major rows, as :meth:`EOT.sample`) and are recorded
    (``angle``, ``scale``, ``translation``, ``distortion``), so :meth:`apply` replays them exactly."""

    rotation: float = 5.0
    scale: float = 0.05
    translate: float = 2.0
    perspective: float = 0.0
    n_samples: int = 4

    def __post_init__(self) -> None:
        for name in ("rotation", "scale", "translate", "perspective"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"pose.{name} must be a number >= 0, got {value!r}")
        if self.scale >= 1:
            raise ConfigError(f"pose.scale is a relative change in [0, 1), got {self.scale}")
        if self.perspective >= 0.5:
            raise ConfigError(
                f"pose.perspective moves the corners by a fraction in [0, 0.5), got {self.perspective}"
            )
        if not isinstance(self.n_samples, int) or isinstance(self.n_samples, bool) or self.n_samples < 1:
            raise ConfigError(f"pose.n_samples must be an integer >= 1, got {self.n_samples!r}")

    def sample(
        self, n: int, generator: GeneratorLike, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Parameters of ``n`` draws (sample-major rows when ``generator`` is a per-sample list)."""
        draw = Draw(n, per_row(generator, n), (1, 1), torch.device(device))
        out = {
            "angle": draw.between(-self.rotation, self.rotation),
            "scale": draw.between(1 - self.scale, 1 + self.scale),
            "translation": (draw.u(2) * 2 - 1) * self.translate,
        }
        if self.perspective:
            out["distortion"] = (draw.u(4, 2) * 2 - 1) * self.perspective
        return out

    def apply(
        self, x: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``x`` (B, C, H, W) wearing the artefact — its premultiplied colours ``layer`` (B, C, H, W)
        under ``mask`` (B or 1, 1, H, W) — moved by the recorded draws ``params`` (a multiple of B rows,
        sample-major): the posed rows and the moved masks. Differentiable in ``layer``."""
        rows = params["angle"].shape[0]
        if rows % x.shape[0]:
            raise ConfigError(f"pose parameters hold {rows} draws for a batch of {x.shape[0]} images")
        reps = rows // x.shape[0]
        mask = mask.expand(x.shape[0], *mask.shape[1:])
        center = centroid(mask).repeat(reps, 1)
        matrix = pose_matrix(params["angle"], params["scale"], params["translation"], center,
                             params.get("distortion"), tuple(x.shape[-2:]))  # fmt: skip
        again = (reps, 1, 1, 1)
        return repose(x.repeat(again), layer.repeat(again), mask.repeat(again), matrix)

    def draw(
        self,
        x: torch.Tensor,
        layer: torch.Tensor,
        mask: torch.Tensor,
        generator: GeneratorLike,
        n_samples: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``n_samples`` posed copies of the batch (sample-major rows), their moved masks and the
        parameters drawn."""
        n = (self.n_samples if n_samples is None else n_samples) * x.shape[0]
        params = self.sample(n, generator, x.device)
        return *self.apply(x, layer, mask, params), params


def make_pose(cfg: Pose | Mapping[str, Any] | bool | None, where: str = "pose") -> Pose | None:
    """A :class:`Pose` from a recipe mapping (unknown keys fail with a suggestion; ``{}`` or ``true``:
    the default small ranges), or None when off (``None`` / ``false``)."""
    if cfg is None or cfg is False:
        return None
    if isinstance(cfg, Pose):
        return cfg
    merged = {} if cfg is True else dict(cfg)
    check_keys(merged, [f.name for f in dataclasses.fields(Pose)], where)
    return Pose(**merged)


def per_row(generator: GeneratorLike, n: int) -> GeneratorLike:
    """Generators for ``n`` sample-major rows: a per-sample list cycled over the rows, else one shared."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if gens and n % len(gens) == 0:
        return gens * (n // len(gens))
    return shared(gens)


def _corners(h: int, w: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(
        [[[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]], dtype=torch.float32, device=device
    )


def _noise(seeds: torch.Tensor, shape: tuple[int, ...], std: float, device, dtype) -> torch.Tensor:
    """Gaussian noise regenerated from one recorded seed per draw (exactly reproducible)."""
    out = []
    for s in seeds.tolist():
        g = torch.Generator().manual_seed(int(s))
        out.append(torch.randn(shape, generator=g) * std)
    return torch.stack(out).to(device=device, dtype=dtype)


def mean_over_draws(values: torch.Tensor, batch: int) -> torch.Tensor:
    """Average a per-row quantity of sample-major draws, (n * B, ...) -> (B, ...)."""
    return values.view(-1, batch, *values.shape[1:]).mean(0)


def make_eot(cfg: EOT | Mapping[str, Any] | None, where: str = "eot", **defaults: Any) -> EOT:
    """An :class:`EOT` from a recipe mapping (unknown keys fail with a suggestion), or defaults."""
    if isinstance(cfg, EOT):
        return cfg
    merged = dict(defaults) | dict(cfg or {})
    check_keys(merged, [f.name for f in dataclasses.fields(EOT)], where)
    return EOT(**merged)


# --------------------------------------------------------------------- evaluation grid
@dataclass(frozen=True, kw_only=True)
class EvalGrid:
    """A fixed grid rotation x scale x brightness for robustness curves (no randomness)."""

    rotations: tuple[float, ...] = (-30.0, -15.0, 0.0, 15.0, 30.0)
    scales: tuple[float, ...] = (0.8, 1.0, 1.2)
    brightnesses: tuple[float, ...] = (-0.2, 0.0, 0.2)

    def points(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Every combination as three (P,) tensors: rotation (degrees), scale, brightness shift."""
        combos = list(itertools.product(self.rotations, self.scales, self.brightnesses))
        t = torch.tensor(combos, dtype=torch.float32, device=device).view(-1, 3)
        return {"rotation": t[:, 0], "scale": t[:, 1], "brightness": t[:, 2]}

    def eot(self) -> EOT:
        """The whole-image EOT whose parameters :meth:`image_params` fills in."""
        return EOT(rotation=1.0, scale=(0.5, 2.0), brightness=1.0, padding_mode="border")

    def image_params(
        self, batch: int, size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> EOTParams:
        """Parameters for ``P * batch`` rows, grid-point-major, applying each point to the whole image."""
        pts = self.points(device)
        rep = {k: v.repeat_interleave(batch) for k, v in pts.items()}
        n = rep["rotation"].numel()
        return EOTParams(
            n=n,
            values={
                "affine": {
                    "angle": rep["rotation"],
                    "scale": torch.stack([rep["scale"], rep["scale"]], 1),
                    "translations": torch.zeros(n, 2, device=device),
                },
                "brightness": {"brightness_factor": 1 + rep["brightness"]},
            },
        )

    def curves(self, hits: torch.Tensor) -> dict[str, Any]:
        """Success rate per grid point and its marginals, from ``hits`` of shape (P, B) (JSON-able)."""
        pts = self.points()
        rate = hits.float().mean(1).cpu()
        out: dict[str, Any] = {
            "points": {k: v.tolist() for k, v in pts.items()} | {"success_rate": rate.tolist()},
        }
        for key, axis in (
            ("rotation", self.rotations),
            ("scale", self.scales),
            ("brightness", self.brightnesses),
        ):
            out[key] = {
                "values": list(axis),
                "success_rate": [
                    float(rate[pts[key] == float(torch.tensor(v, dtype=torch.float32))].mean()) for v in axis
                ],
            }
        return out
