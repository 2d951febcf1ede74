"""The input a model declares: its frame size, the short side its images are resized to before the centre
crop, its clip length (video), and where the declaration comes from.

``declared_input(model, info)`` answers, first match wins:

1. what the model's source recorded in ``info["input"]`` (:func:`input_record`): the zoo entry's training
   data shape, torchvision's weights transforms (``crop_size``, ``resize_size``; a video model's
   ``clip_len``), pytorchvideo's builder settings, RobustBench's dataset (cifar10: 32, imagenet: 224);
2. an ``input_size`` attribute on the model (or on a model it wraps in ``.model``): an int (square), or
   ``(H, W)``, ``(C, H, W)`` as timm writes it, or ``(C, T, H, W)`` for a video model. This is how a model
   of your own (a ``package.module:function`` factory's, or an object given to the Python API) declares it;
3. timm's ``pretrained_cfg["input_size"]`` (with ``crop_pct``) on the model or a model it wraps.

None when the model declares nothing. The evaluation layer passes the answer to the data of a folder
given as ``--data`` (``robustkit.data.loading.load_dataset(..., model_input=...)``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

INPUT_ATTRIBUTE = "input_size"


@dataclass(frozen=True)
class InputSize:
    """``height`` x ``width`` pixels, images resized (short side) to ``resize`` before the centre crop
    (None: straight to the size), clips of ``frames`` frames (None: images, or not declared), declared by
    ``source`` (words: "timm pretrained_cfg of resnet18.a1_in1k")."""

    height: int
    width: int
    source: str
    resize: int | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        for what in ("height", "width", "resize", "frames"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{self.source}: input {what} must be an integer >= 1, got {value!r}")

    @property
    def dims(self) -> str:
        """``224x224``, or ``16 frames of 112x112`` for a clip."""
        frame = f"{self.height}x{self.width}"
        return f"{self.frames} frames of {frame}" if self.frames else frame

    def describe(self) -> str:
        """The one line a run states: ``input 224x224 from timm pretrained_cfg of resnet18.a1_in1k``."""
        return f"input {self.dims} from {self.source}"

    def preprocessing(self) -> dict[str, Any]:
        """As a folder's preprocessing takes it: ``size`` (an int when square, else ``(H, W)``), ``resize``,
        ``frames``; keys without a value left out."""
        size = self.height if self.height == self.width else (self.height, self.width)
        return {k: v for k, v in {"size": size, "resize": self.resize, "frames": self.frames}.items() if v}

    def as_dict(self) -> dict[str, Any]:
        return {"size": [self.height, self.width], "resize": self.resize, "frames": self.frames,
                "source": self.source}  # fmt: skip


def input_record(
    shape: int | Sequence[int], source: str, *, resize: int | None = None, video: bool | None = None
) -> dict[str, Any]:
    """What a model source records in ``info["input"]``: ``shape`` parsed as :func:`parse_shape` does."""
    return parse_shape(shape, source, resize=resize, video=video).as_dict()


def parse_shape(
    shape: Any, source: str, *, resize: int | None = None, video: bool | None = None
) -> InputSize:
    """An input shape as models declare it: ``N`` (square), ``(H, W)``, ``(C, H, W)`` or ``(C, T, H, W)``.
    ``video=False`` drops a clip length, ``True`` needs one."""
    dims = [shape] if isinstance(shape, int) and not isinstance(shape, bool) else shape
    ok = isinstance(dims, Sequence) and not isinstance(dims, str) and 1 <= len(dims) <= 4
    if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ConfigError(
            f"{source}: expected an input size N, (H, W), (C, H, W) or (C, T, H, W) of positive integers, "
            f"got {shape!r}"
        )
    dims = list(dims)
    h, w = (dims[0], dims[0]) if len(dims) == 1 else (dims[-2], dims[-1])
    frames = dims[1] if len(dims) == 4 else None
    if video is True and frames is None:
        raise ConfigError(f"{source}: a video model's input size is (C, T, H, W), got {shape!r}")
    return InputSize(h, w, source, resize=resize, frames=None if video is False else frames)


def _wrapped(model: Any) -> Iterator[Any]:
    """``model`` and the models it wraps (``.model`` of ``Normalized``, ``PackPathways``, ``MultiClip``, a
    defense ...), outermost first."""
    seen: set[int] = set()
    while model is not None and id(model) not in seen and len(seen) < 16:
        seen.add(id(model))
        yield model
        model = getattr(model, "model", None)


def timm_input(cfg: Mapping[str, Any] | None, name: str | None = None) -> InputSize | None:
    """The input of timm's ``pretrained_cfg`` (a dict): ``input_size`` (C, H, W), and the short side
    ``floor(size / crop_pct)`` timm's eval transform resizes to before its centre crop."""
    if not cfg or not cfg.get("input_size"):
        return None
    tag, arch = cfg.get("tag"), cfg.get("architecture") or name or "the model"
    source = f"timm pretrained_cfg of {arch}" + (f".{tag}" if tag else "")
    size = parse_shape(tuple(cfg["input_size"]), source, video=False)
    crop_pct = cfg.get("crop_pct")
    resize = None
    if crop_pct and cfg.get("crop_mode", "center") == "center" and size.height == size.width:
        resize = int(math.floor(size.height / float(crop_pct)))
    return InputSize(size.height, size.width, source, resize=resize if resize != size.height else None)


def torchvision_input(name: str, weights: Any = None, *, video: bool = False) -> dict[str, Any] | None:
    """``info["input"]`` of a torchvision architecture from its weights' transforms (the default weights
    when none are named): ``crop_size``, the short side of ``resize_size``; a video model's clip length
    is the ``clip_len`` its weights were evaluated with (their documentation), else the shortest clip
    they take (``min_temporal_size``). None when torchvision has no weights metadata for ``name``."""
    if weights is None:
        from torchvision.models import get_model_weights

        try:
            weights = get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return None
    transforms = weights.transforms()
    crop, resize = getattr(transforms, "crop_size", None), getattr(transforms, "resize_size", None)
    if not crop:
        return None
    shape: list[int] = [3, int(crop[0]), int(crop[-1])]
    source = f"torchvision {weights} transforms"
    if video:
        found = re.search(r"clip_len=(\d+)", str(weights.meta.get("_docs", "")))
        frames = int(found.group(1)) if found else weights.meta.get("min_temporal_size")
        if not frames:
            return None
        shape.insert(1, int(frames))
        source += f" (clip_len {frames})" if found else " (min_temporal_size)"
    short = int(min(resize)) if resize else None
    return input_record(shape, source, resize=short if short and short != shape[-1] and not video else None,
                        video=video)  # fmt: skip


def declared_input(model: Any, info: Mapping[str, Any] | None = None) -> InputSize | None:
    """The input ``model`` declares (see the module docstring), None when it declares none; a malformed
    ``input_size`` attribute is a ``ConfigError`` naming what was expected."""
    recorded = (info or {}).get("input")
    if isinstance(recorded, Mapping) and recorded.get("size"):
        h, w = recorded["size"]
        return InputSize(int(h), int(w), str(recorded.get("source") or "the model's source"),
                         resize=recorded.get("resize"), frames=recorded.get("frames"))  # fmt: skip
    layers = list(_wrapped(model))
    for layer in layers:
        value = getattr(layer, INPUT_ATTRIBUTE, None)
        if value is not None and not callable(value):
            return parse_shape(value, f"the model's {INPUT_ATTRIBUTE} attribute ({type(layer).__name__})")
    for layer in layers:
        cfg = getattr(layer, "pretrained_cfg", None)
        if isinstance(cfg, Mapping) and (found := timm_input(cfg)) is not None:
            return found
    return None


def video_input(name: str) -> dict[str, Any] | None:
    """``info["input"]`` of a video architecture of ``robustkit.models.video``: pytorchvideo's builder
    settings (X3D's clip length and crop, Slow / SlowFast 8x8), torchvision's weights metadata otherwise."""
    from .video import PYTORCHVIDEO_INPUT

    if name in PYTORCHVIDEO_INPUT:
        frames, crop = PYTORCHVIDEO_INPUT[name]
        return input_record((3, frames, crop, crop), f"pytorchvideo's {name} settings", video=True)
    return torchvision_input(name, video=True)
