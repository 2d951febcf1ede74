"""Photographs of a printed artefact: the manifest format ``photos`` that closes the physical loop
(optimize, ``robustkit export``, print, photograph, evaluate).

Layout: ``root/<class>/<photo>`` (one folder of photos per true class, as ImageNet folders), every
split reading the same folder unless ``splits`` maps them. Optional corner annotations: a
``corners.json`` beside the class folders (or the file named by ``corners`` in the manifest) mapping
``"<class>/<photo>"`` to the object's four corners ``[[x, y], ...]`` in the photo's own pixels, in the
order top-left, top-right, bottom-right, bottom-left. The photos are resized and centre-cropped like
an image folder (``preprocessing: {size, resize}``) and the corners go through the same resize and
crop: ``dataset.corners`` (N, 4, 2) in pixels of the tensor the model sees, NaN for a photo without
annotation (object-anchored placement then falls back to image coordinates).

Example manifest::

    name: printed-patch-photos
    format: photos
    root: ~/photos/patch-run-3
    classes: [stop, yield, ...]    # optional: the class names of the model, in its order
    preprocessing: {size: 32}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from .formats import ImageFolderDataset, register_format

CORNERS_FILE = "corners.json"


def _read_corners(path: Path) -> dict[str, list[list[float]]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read corner annotations {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping '<class>/<photo>': [[x, y] x 4]")
    for key, pts in raw.items():
        ok = isinstance(pts, list) and len(pts) == 4
        ok = ok and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int | float) for v in p) for p in pts
        )
        if not ok:
            raise InputError(
                f"{path}: corners of {key!r} must be four [x, y] points (top-left, top-right, "
                f"bottom-right, bottom-left), got {pts!r}"
            )
    return raw


def crop_corners(pts: torch.Tensor, width: int, height: int, resize: int, size: int) -> torch.Tensor:
    """Corners (4, 2) in a ``width`` x ``height`` photo mapped through torchvision's ``resize(resize)``
    (shorter side to ``resize``) and ``center_crop(size)``."""
    scale = resize / min(width, height)
    new_w, new_h = (
        (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    )
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return pts * scale - torch.tensor([left, top], dtype=pts.dtype)


class PhotoDataset(ImageFolderDataset):
    """An image folder of photographs with optional per-photo object corners (``corners``)."""

    def __init__(self, root: Path, *, corners: Path | None = None, **kw) -> None:
        super().__init__(root, **kw)
        self.folders = list(self.classes)  # the annotation keys; ``classes`` may be renamed by the manifest
        file = corners if corners is not None else self.root / CORNERS_FILE
        self.annotations = _read_corners(file) if file.is_file() else {}
        if corners is not None and not file.is_file():
            raise InputError(f"corner annotations {file} (from the manifest's 'corners') do not exist")
        known = {f"{self.folders[c]}/{f.name}" for f, c in self.items}
        unknown = sorted(set(self.annotations) - known)
        if unknown:
            raise InputError(
                f"{file}: corners for photos that are not in {self.root}: {', '.join(unknown[:5])}"
            )

    @property
    def corners(self) -> torch.Tensor:
        """The object's corners per photo, (N, 4, 2) in pixels of the preprocessed image; NaN if none."""
        self.verify()
        out = torch.full((len(self.items), 4, 2), math.nan)
        for i, (f, c) in enumerate(self.items):
            pts = self.annotations.get(f"{self.folders[c]}/{f.name}")
            if pts is not None:
                with Image.open(f) as im:
                    w, h = im.size
                out[i] = crop_corners(
                    torch.tensor(pts, dtype=torch.float32), w, h, self.resize or self.size, self.size
                )
        return out


@register_format("photos")
def photos(manifest: dict, split: str, root: Path) -> Dataset:
    """Photos of the printed artefact, one folder per class, optional ``corners.json`` (see the module)."""
    pre, corners = manifest.get("preprocessing") or {}, manifest.get("corners")
    sub = (manifest.get("splits") or {}).get(split)
    ds = PhotoDataset(root / sub if sub else root, corners=None if corners is None else root / str(corners),
                      size=int(pre.get("size", 224)), resize=pre.get("resize"),
                      on_corrupt=pre.get("on_corrupt", "skip"), name=manifest.get("name", "photos"))  # fmt: skip
    ds.classes = list(manifest.get("classes") or ds.classes)
    return ds
