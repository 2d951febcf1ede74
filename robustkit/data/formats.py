"""Loaders for real datasets on disk: CIFAR-10 (python pickle layout) and ImageFolder trees (ImageNet layout)."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import InputError, UnsafeCheckpointError
from .loading import register_format
from .masks import read_corners
from .synthetic import SyntheticDataset

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a CIFAR batch cannot run code through us."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to unpickle {module}.{name}: CIFAR batches hold only arrays and lists"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(f"CIFAR-10 batch {path} is missing (expected the cifar-10-batches-py layout)")
    try:
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise InputError(f"CIFAR-10 batch {path} is corrupt: {exc}") from exc
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise InputError(f"CIFAR-10 batch {path} lacks the 'data' and 'labels' fields")
    data = np.asarray(obj[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(f"CIFAR-10 batch {path}: 'data' must be (N, 3072) uint8, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(obj[b"labels"], dtype=np.int64)


@register_format("cifar10-python")
def cifar10(manifest: dict, split: str, root: Path) -> Dataset:
    """``root`` holds data_batch_1..5 and test_batch (or a cifar-10-batches-py folder holding them)."""
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    splits = manifest.get("splits") or {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
    }
    if split not in splits:
        raise InputError(f"CIFAR-10 has splits {', '.join(splits)}, not '{split}'")
    parts = [_read_cifar_batch(root / name) for name in splits[split]]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    classes = manifest.get("classes") or CIFAR10_CLASSES
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise InputError(f"CIFAR-10 labels in {root} fall outside [0, {len(classes)})")
    return SyntheticDataset(manifest.get("name", "cifar10"), x, y, classes, split=split, root=str(root))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``: classes sorted by folder name, images resized and centre-cropped.

    Corrupt files are skipped (counted in ``skipped``) when ``on_corrupt='skip'``, refused otherwise.
    """

    def __init__(
        self,
        root: Path,
        *,
        size: int,
        resize: int | None = None,
        on_corrupt: str = "skip",
        name: str = "imagefolder",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise InputError(
                f"image folder {self.root} has no class sub-folders (expected root/<class>/<image>)"
            )
        self.items = [
            (f, c)
            for c, cls in enumerate(self.classes)
            for f in sorted((self.root / cls).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.items:
            raise InputError(
                f"image folder {self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self.size, self.resize, self.on_corrupt, self.name = size, resize or size, on_corrupt, name
        self.skipped: list[str] = []
        self._checked = False

    def _load(self, path: Path) -> torch.Tensor:
        import torchvision.transforms.functional as TF

        with Image.open(path) as im:
            im = im.convert("RGB")
            im = TF.center_crop(TF.resize(im, self.resize), [self.size, self.size])
            return TF.to_tensor(im)

    def verify(self) -> None:
        """Open every file once; drop (or refuse) the corrupt ones."""
        if self._checked:
            return
        good = []
        for f, c in self.items:
            try:
                with Image.open(f) as im:
                    im.load()
                good.append((f, c))
            except (UnidentifiedImageError, OSError) as exc:
                if self.on_corrupt != "skip":
                    raise InputError(f"corrupt image {f}: {exc}") from exc
                self.skipped.append(str(f))
                log.warning("skipping corrupt image %s", f)
        self.items = good
        self._checked = True

    def __len__(self) -> int:
        self.verify()
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.verify()
        f, c = self.items[i]
        return self._load(f), c


@register_format("imagefolder")
def imagefolder(manifest: dict, split: str, root: Path) -> Dataset:
    """ImageNet layout: ``root/<split dir>/<class>/<image>``; split dirs from ``splits`` (default train/val)."""
    pre = manifest.get("preprocessing") or {}
    splits = manifest.get("splits") or {"train": "train", "test": "val", "val": "val"}
    sub = splits.get(split)
    folder = root / sub if sub and (root / sub).is_dir() else root
    ds = ImageFolderDataset(
        folder,
        size=int(pre.get("size", 224)),
        resize=pre.get("resize"),
        on_corrupt=pre.get("on_corrupt", "skip"),
        name=manifest.get("name", "imagefolder"),
    )
    if manifest.get("classes"):
        ds.classes = list(manifest["classes"])
    if manifest.get("objects"):  # object corners per image: stickers placed on the object (data/masks.py)
        ds.verify()
        ds.objects = read_corners(root / manifest["objects"], ds.items, folder, ds.resize, ds.size)
    return ds
