"""Photographs of a printed artefact: the manifest format ``photos`` that closes the physical loop
(optimize, ``robustkit export``, print, photograph, evaluate).

Layout: ``root/<class>/<photo>`` (one folder of photos per true class, as ImageNet folders), every
split reading the same folder unless ``splits`` maps them. Optional corner annotations: a
``corners.json`` beside the class folders (or the file named by ``corners`` in the manifest) mapping
``"<class>/<photo>"`` to the object's four corners ``[[x, y], ...]`` in the photo's own pixels, in the
order top-left, top-right, bottom-right, bottom-left, in the same convention as an image folder's
``objects:`` file (``robustkit.data.masks``: the top-left pixel's centre is (0, 0)). The photos are
resized and centre-cropped like an image folder (``preprocessing: {size, resize}``) and the corners go
through the same resize and crop (``masks.corners_in_crop``): ``dataset.corners`` (N, 4, 2) in pixels
of the tensor the model sees, NaN for a photo without annotation. When every photo is annotated,
``dataset.objects`` holds their geometry and object-anchored attacks (``placement: auto``, stickers)
use it; otherwise they fall back to image coordinates.

Example manifest::

    name: printed-patch-photos
    format: photos
    root: ~/photos/patch-run-3
    classes: [stop, yield, ...]    # optional: the class names of the model, in its order
    preprocessing: {size: 32}
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..functional.placement import ObjectGeometry
from .formats import ImageFolderDataset, register_format
from .masks import corner_table, corners_in_crop, image_hw

CORNERS_FILE = "corners.json"


class PhotoDataset(ImageFolderDataset):
    """An image folder of photographs with optional per-photo object corners (``corners``)."""

    def __init__(self, root: Path, *, corners: Path | None = None, **kw) -> None:
        super().__init__(root, **kw)
        self.folders = list(self.classes)  # the annotation keys; ``classes`` may be renamed by the manifest
        file = corners if corners is not None else self.root / CORNERS_FILE
        self.annotations = corner_table(file) if file.is_file() else {}
        if corners is not None and not file.is_file():
            raise InputError(f"corner annotations {file} (from the manifest's 'corners') do not exist")
        known = {f"{self.folders[c]}/{f.name}" for f, c in self.items}
        unknown = sorted(set(self.annotations) - known)
        if unknown:
            raise InputError(
                f"{file}: corners for photos that are not in {self.root}: {', '.join(unknown[:5])}"
            )

    @functools.cached_property
    def corners(self) -> torch.Tensor:
        """The object's corners per photo, (N, 4, 2) in pixels of the preprocessed image; NaN if none."""
        self.verify()
        out = torch.full((len(self.items), 4, 2), math.nan)
        for i, (f, c) in enumerate(self.items):
            pts = self.annotations.get(f"{self.folders[c]}/{f.name}")
            if pts is not None:
                out[i] = corners_in_crop(
                    pts, image_hw(f, self.max_pixels), self.resize or self.size, self.size
                )
        return out

    @property
    def objects(self) -> ObjectGeometry | None:
        """The objects' geometry when every photo is annotated (patches and stickers are then placed on
        the object, as on an image folder with ``objects:``); None otherwise."""
        corners = self.corners
        return ObjectGeometry(corners) if len(corners) and not corners.isnan().any() else None


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
