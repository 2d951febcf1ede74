"""Loaders for real datasets on disk: CIFAR-10 (python pickle layout), ImageFolder trees (ImageNet layout),
folders of videos per class, and a plain folder of class sub-folders (``--data ./myfolder``)."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError, UnsafeCheckpointError
from .loading import open_image, register_format
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
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"CIFAR-10 batch {path}: {exc}") from exc
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
    """``root/<class>/<image>``: classes sorted by folder name, images resized (shorter side to ``resize``,
    default the larger side of ``size``) and centre-cropped to ``size`` (``N`` for N x N, or ``(H, W)``).
    Without ``size``, the images keep their own size: the first image's shorter side (a folder of 32x32
    images stays 32x32, nothing is upsampled).

    Corrupt files are skipped (counted in ``skipped``) when ``on_corrupt='skip'``, refused otherwise. An
    image of more than ``max_pixels`` pixels is refused in either case, naming the file and the limit.
    """

    def __init__(
        self,
        root: Path,
        *,
        size: int | tuple[int, int] | None = None,
        resize: int | None = None,
        on_corrupt: str = "skip",
        name: str = "imagefolder",
        max_pixels: int | None = None,
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
        self.resize, self.on_corrupt, self.name, self.max_pixels = resize, on_corrupt, name, max_pixels
        self.size = size
        self.skipped: list[str] = []
        self._checked = False

    def _load(self, path: Path) -> torch.Tensor:
        import torchvision.transforms.functional as TF

        with open_image(path, self.max_pixels) as im:
            im = im.convert("RGB")
            size = self.size or min(im.size)
            h, w = (size, size) if isinstance(size, int) else size
            im = TF.center_crop(TF.resize(im, self.resize or max(h, w)), [h, w])
            return TF.to_tensor(im)

    def verify(self) -> None:
        """Open every file once; drop (or refuse) the corrupt ones; without ``size``, take the first
        image's shorter side."""
        if self._checked:
            return
        good = []
        for f, c in self.items:
            try:
                with open_image(f, self.max_pixels) as im:
                    im.load()
                    if self.size is None:
                        self.size = min(im.size)
                good.append((f, c))
            except (UnidentifiedImageError, OSError) as exc:
                if self.on_corrupt != "skip":
                    raise InputError(f"corrupt image {f}: {exc}") from exc
                self.skipped.append(str(f))
                log.warning("skipping corrupt image %s", f)
        if not good:
            raise InputError(
                f"image folder {self.root}: every image is corrupt ({len(self.skipped)} skipped)"
            )
        self.items = good
        self._checked = True

    def __len__(self) -> int:
        self.verify()
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.verify()
        f, c = self.items[i]
        return self._load(f), c


def split_folder(root: Path, split: str, splits: dict[str, Any] | None, name: str) -> Path:
    """The folder of ``split`` under ``root``: ``root/<splits[split]>`` (default: ``train`` for train,
    ``val`` or ``test`` for test) when it exists. Otherwise ``root`` itself is the test (or val) split,
    and asking for another split is a ConfigError (universal attacks then fit on the test images, with
    a warning)."""
    names = splits or {"train": "train", "test": "val", "val": "val"}
    for sub in (names.get(split), *(("test",) if split == "test" and not splits else ())):
        if sub and (root / str(sub)).is_dir():
            return root / str(sub)
    if split in ("test", "val"):
        return root
    raise ConfigError(f"{name}: no '{split}' split: {root / str(names.get(split, split))} is not a folder")


def check_classes(ds: Any, manifest: dict, where: Path) -> Any:
    """The manifest's ``classes`` name the folder's classes in order: as many as the folder holds."""
    listed = manifest.get("classes")
    if listed:
        if len(listed) != len(ds.classes):
            raise InputError(
                f"{manifest.get('name')}: the manifest lists {len(listed)} classes, but {where} holds "
                f"{len(ds.classes)} class folders ({', '.join(ds.classes[:12])}{', ...' if len(ds.classes) > 12 else ''}); "
                "make 'classes' name every folder, in sorted order, or drop it"
            )
        ds.classes = [str(c) for c in listed]
    return ds


@register_format("imagefolder")
def imagefolder(manifest: dict, split: str, root: Path) -> Dataset:
    """ImageNet layout: ``root/<split dir>/<class>/<image>``; split dirs from ``splits`` (default train/val).
    ``preprocessing``: ``size`` (default: the images' own), ``resize``, ``on_corrupt``, ``max_pixels``."""
    pre = manifest.get("preprocessing") or {}
    name = str(manifest.get("name", "imagefolder"))
    folder = split_folder(root, split, manifest.get("splits"), name)
    ds = ImageFolderDataset(
        folder,
        size=pre.get("size"),
        resize=pre.get("resize"),
        on_corrupt=pre.get("on_corrupt", "skip"),
        name=name,
        max_pixels=pre.get("max_pixels"),
    )
    ds = check_classes(ds, manifest, folder)
    if manifest.get("objects"):  # object corners per image: stickers placed on the object (data/masks.py)
        ds.verify()
        if not isinstance(ds.size, int):
            raise InputError(
                f"{name}: object corners need a square size, got {ds.size}; set preprocessing.size"
            )
        ds.objects = read_corners(
            root / manifest["objects"], ds.items, folder, ds.resize or ds.size, ds.size, ds.max_pixels
        )
    return ds


@register_format("videofolder")
def videofolder(manifest: dict, split: str, root: Path) -> Dataset:
    """``root/<class>/<video>``: one sub-folder of videos per class (``.mp4``, ``.avi``, ...), decoded as
    in UCF-101 (``preprocessing``: ``frames``, ``size``, ``clips``, ``stride``, ``sampling``, ``on_corrupt``)."""
    from .video import VIDEO_SUFFIXES, VideoClipDataset

    name = str(manifest.get("name", "videofolder"))
    folder = split_folder(root, split, manifest.get("splits"), name)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    samples = [
        (f, c)
        for c, cls in enumerate(classes)
        for f in sorted((folder / cls).iterdir())
        if f.suffix.lower() in VIDEO_SUFFIXES
    ]
    if not samples:
        raise InputError(
            f"video folder {folder} holds no videos in class sub-folders (expected {folder}/<class>/<video>, "
            f"{', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    pre = {
        k: v for k, v in (manifest.get("preprocessing") or {}).items() if k not in ("resize", "max_pixels")
    }
    ds = VideoClipDataset(samples, classes, split=split, name=name, **pre)
    return check_classes(ds, manifest, folder)


@register_format("folder")
def folder(manifest: dict, split: str, root: Path) -> Dataset:
    """A folder of class sub-folders, images or videos (whichever its files are): ``--data ./myfolder``."""
    from .video import VIDEO_SUFFIXES

    base = split_folder(root, split, manifest.get("splits"), str(manifest.get("name", "folder")))
    files = [f for d in sorted(base.iterdir()) if d.is_dir() for f in d.iterdir()]
    videos = sum(f.suffix.lower() in VIDEO_SUFFIXES for f in files)
    images = sum(f.suffix.lower() in IMAGE_SUFFIXES for f in files)
    if not videos and not images:
        raise InputError(
            f"{root} holds no images or videos in class sub-folders: expected {root}/<class>/<image or video> "
            f"(images: {', '.join(sorted(IMAGE_SUFFIXES))}; videos: {', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    if videos > images:
        size = (manifest.get("preprocessing") or {}).get("size")
        if isinstance(size, tuple | list):  # a model's non-square (H, W): clips are cut square
            raise InputError(
                f"{root}: video frames are cut square, but the model declares {size[0]}x{size[1]}; write a "
                "manifest with format: videofolder and preprocessing.size (datasets/README.md)"
            )
        return videofolder(manifest, split, root)
    image_keys = ("size", "resize", "on_corrupt", "max_pixels")
    pre = {k: v for k, v in (manifest.get("preprocessing") or {}).items() if k in image_keys}
    return imagefolder({**manifest, "preprocessing": pre}, split, root)
