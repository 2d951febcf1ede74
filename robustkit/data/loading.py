"""Resolve ``--data`` specs: a built-in dataset name, a manifest name from ``datasets/``, a manifest path,
or a folder with one sub-folder of images (or videos) per class.

A manifest is YAML: ``name``, ``format`` (a registered loader), ``root``, ``source``, ``license``,
``checksum``, ``classes``, ``splits`` and ``preprocessing``, each checked (``check_manifest``) before
anything is loaded. Loaders are registered with ``register_format``.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from .. import schema
from ..errors import ConfigError, InputError
from ..registry import Registry, check_keys, suggest
from .synthetic import BUILTIN, SyntheticDataset

FORMATS: Registry[Dataset] = Registry("dataset format", autoload=("robustkit.data",))
register_format = FORMATS.register

MANIFEST_KEYS = (
    "name",
    "format",
    "root",
    "source",
    "license",
    "checksum",
    "classes",
    "preprocessing",
    "splits",
    "description",
    "objects",
)


def _int(minimum: int = 1) -> Callable[[Any, str], Any]:
    return lambda value, where: schema.integer(value, where, minimum=minimum)


def _one_of(*choices: Any) -> Callable[[Any, str], Any]:
    return lambda value, where: schema.choice(value, where, choices)


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else check(value, where)


# The ``preprocessing`` keys of each built-in format and what each must be (a format registered
# elsewhere checks its own). ``max_pixels`` is the image-size limit: a file with more pixels is refused
# before it is decoded (PIL's decompression-bomb guard, at ``DEFAULT_MAX_PIXELS`` unless given).
IMAGE_KEYS = {"size": _int(), "resize": _int(), "on_corrupt": _one_of("skip", "error"), "max_pixels": _int()}
VIDEO_KEYS = {"frames": _int(), "size": _int(), "clips": _int(), "stride": _int(),
              "sampling": _one_of("uniform", "random"), "on_corrupt": _one_of("skip", "error")}  # fmt: skip
PREPROCESSING: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "cifar10-python": {"size": _one_of(32)},
    "imagefolder": IMAGE_KEYS,
    "videofolder": VIDEO_KEYS,
    "folder": {**VIDEO_KEYS, **IMAGE_KEYS},
    "face-folder": {
        "size": _int(),
        "align": schema.boolean,
        "cascade_dir": schema.string,
        "min_images": _int(),
        "max_pixels": _int(),
    },  # fmt: skip
    "gtsrb": {"size": _optional(_int()), "crop_roi": schema.boolean, "max_pixels": _int()},
    "ucf101": VIDEO_KEYS,
    "hmdb51": VIDEO_KEYS,
}
# Formats whose input size follows the model's (a folder given as ``--data``): ``load_dataset(...,
# model_input=...)`` sets these preprocessing keys when the manifest sets none of them.
MODEL_SIZED = ("folder",)
MODEL_INPUT_KEYS = ("size", "resize", "frames")
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's default, about 89 megapixels
_PIXEL_LIMIT = threading.Lock()


@contextmanager
def open_image(path: str | Path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """``PIL.Image.open(path)`` refusing an image of more than ``max_pixels`` pixels (default
    ``DEFAULT_MAX_PIXELS``) with an ``InputError`` naming the file and the limit, before it is decoded."""
    limit = int(max_pixels or DEFAULT_MAX_PIXELS)
    with _PIXEL_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise InputError(
                f"image {path} has {size}, over the limit of {limit:,} pixels; if it is meant to be that "
                "large, raise preprocessing.max_pixels in the dataset manifest (datasets/README.md)"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = before
    with im:
        yield im


def manifest_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("robustkit.manifests").iterdir() if p.name.endswith(".yaml")
    )


def folder_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a folder given as ``--data``: one sub-folder per class (images or videos), the
    folder's name naming the data."""
    return {"name": path.resolve().name or "folder", "format": "folder", "root": str(path)}


def read_manifest(spec: str) -> tuple[dict[str, Any], Path]:
    """The checked manifest ``spec`` names (a file, a built-in manifest name, or a folder of class
    sub-folders, which stands for its own manifest) and its path."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return folder_manifest(path), path
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        candidate = resources.files("robustkit.manifests") / f"{spec}.yaml"
        if not candidate.is_file():
            known = BUILTIN.names() + manifest_names()
            raise ConfigError(
                f"unknown dataset '{spec}'{suggest(spec, known)}. Built-in: {', '.join(BUILTIN.names())}; "
                f"manifests: {', '.join(manifest_names())}; or a path to a manifest .yaml or to a folder "
                "with one sub-folder of images (or videos) per class"
            )
        path = Path(str(candidate))
    if not path.is_file():
        raise ConfigError(f"dataset manifest {path} does not exist (nor a folder of that name)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({exc}); expected a YAML text file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a manifest must be a mapping with keys {', '.join(MANIFEST_KEYS)}")
    return check_manifest(raw, path), path


def check_manifest(raw: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A manifest's keys and values checked (each error names ``path`` and the field)."""
    check_keys(raw, MANIFEST_KEYS, str(path))
    if "format" not in raw:
        raise ConfigError(f"{path}: missing 'format' (one of {', '.join(FORMATS.names())})")
    schema.choice(raw["format"], f"{path}: format", FORMATS.names())
    for key in ("name", "root", "source", "license", "description"):
        if raw.get(key) is not None:
            schema.check(raw[key], str, f"{path}: {key}")
    if raw.get("checksum") is not None:
        schema.string(raw["checksum"], f"{path}: checksum")
    if raw.get("classes") is not None:
        for i, name in enumerate(schema.items(raw["classes"], f"{path}: classes")):
            if isinstance(name, bool) or not isinstance(name, str | int):
                raise schema.fail(f"{path}: classes[{i}]", "a class name", name)
    for key, value in schema.mapping(raw.get("splits") or {}, f"{path}: splits").items():
        if key == "fold":
            schema.integer(value, f"{path}: splits.fold", minimum=1)
        else:
            schema.string(value, f"{path}: splits.{key}")
    pre = schema.mapping(raw.get("preprocessing") or {}, f"{path}: preprocessing")
    checks = PREPROCESSING.get(raw["format"])
    if checks is not None:
        check_keys(pre, list(checks), f"{path}: preprocessing")
        for key, value in pre.items():
            checks[key](value, f"{path}: preprocessing.{key}")
    return raw


def load_dataset(
    spec: str | Dataset | tuple[torch.Tensor, torch.Tensor],
    split: str = "test",
    *,
    root: str | Path | None = None,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
    model_input: Mapping[str, Any] | None = None,
) -> Dataset:
    """A torch Dataset of (x in [0, 1], label) with a ``classes`` attribute.

    ``spec``: a built-in dataset name, a manifest (a name in ``datasets/`` or a path), a folder with one
    sub-folder of images or videos per class, a Dataset, or ``(x, y)`` tensors. A manifest's ``name``
    (a folder's own name) names the dataset (``dataset.name``).
    ``n`` asks a built-in dataset for its first ``n`` samples only (each built-in sample depends only
    on its index, so they equal the first ``n`` of the whole split); files on disk ignore it.
    ``num_classes``: the class count of ``(x, y)`` tensor data (without it, ``max(y) + 1`` with a
    warning: a subset that lacks the last classes would be counted short).
    ``model_input``: the input the model declares, as preprocessing keys (``size``: N or (H, W), ``resize``:
    the short side before the centre crop, ``frames``: the clip length; the evaluation layer takes them from
    ``robustkit.models.inputsize``). A folder given as data (format ``folder``) is resized to it unless its
    manifest sets one of those keys; such a dataset says where its size came from in ``input_from``:
    ``"model"``, ``"manifest"`` or ``"data"`` (the images' own size, the video defaults).
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return tensor_dataset(*spec, num_classes=num_classes)
    if spec in BUILTIN:
        return BUILTIN.create(spec, split=split, seed=seed, **({"n": n} if n is not None else {}))
    manifest, path = read_manifest(str(spec))
    root_dir = Path(root or manifest.get("root") or "").expanduser()
    if not root and not manifest.get("root"):
        raise ConfigError(f"{path}: no 'root' in the manifest; pass --data-root DIR")
    if not root_dir.exists():
        raise InputError(
            f"dataset directory {root_dir} (from {'--data-root' if root else path}) does not exist; "
            f"download {manifest.get('name', spec)} from {manifest.get('source', 'its source')} and point --data-root at it"
        )
    sized = manifest["format"] in MODEL_SIZED
    if sized:
        pre = dict(manifest.get("preprocessing") or {})
        own = any(k in pre for k in MODEL_INPUT_KEYS)
        chosen = {} if own else {k: model_input[k] for k in MODEL_INPUT_KEYS if (model_input or {}).get(k)}
        manifest = {**manifest, "preprocessing": {**pre, **chosen}}
    loader = FORMATS.get(str(manifest["format"]))
    try:
        dataset = loader(manifest, split, root_dir)
    except (InputError, ConfigError) as exc:  # name the manifest, unless the message does already
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
    if manifest.get("name") and not isinstance(getattr(type(dataset), "name", None), property):
        dataset.name = str(manifest["name"])
    if sized:
        dataset.input_from = "manifest" if own else "model" if chosen else "data"
    return dataset


def tensor_dataset(x: torch.Tensor, y: torch.Tensor, *, num_classes: int | None = None) -> SyntheticDataset:
    """``(x, y)`` tensors as a dataset with ``num_classes`` classes (inferred as ``max(y) + 1``, with a
    warning, when not given). A label outside ``[0, num_classes)`` is an ``InputError`` naming its index."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError(
            f"data (x, y) must be two torch tensors, got ({type(x).__name__}, {type(y).__name__})"
        )
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or len(y) != len(x):
        raise InputError(
            f"labels y must be integer class indices of shape ({len(x)},) matching x, got dtype {y.dtype} "
            f"shape {tuple(y.shape)}"
        )
    y = y.long()
    if num_classes is None:
        num_classes = int(y.max()) + 1 if len(y) else 0
        warnings.warn(
            f"(x, y) data: the class count was inferred as max(y) + 1 = {num_classes}; pass num_classes= "
            "(the model's number of outputs) if the labels do not cover every class",
            UserWarning,
            stacklevel=2,
        )
    bad = ((y < 0) | (y >= num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"label y[{i}] = {int(y[i])} is outside [0, {num_classes}) (num_classes={num_classes}); "
            f"{len(bad)} label(s) out of range"
        )
    return SyntheticDataset("tensors", x, y, [str(i) for i in range(num_classes)])
