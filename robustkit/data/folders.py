"""Loaders for real images on disk: a folder of face photos per identity, and GTSRB in its own layout.

Both return a lazy ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, image a float tensor
(3, size, size) in [0, 1], with ``.classes`` (names) and ``.targets`` (labels). Files are decoded with
Pillow when an item is read; nothing is cached on disk.

Face folders (``load_face_folder``)::

    root/<identity>/*.jpg|png|...     one sub-folder per person, the folder name is the class

GTSRB (``load_gtsrb``), as the archives unpack::

    root/Final_Training/Images/000NN/*.ppm  with  root/Final_Training/Images/000NN/GT-000NN.csv
    root/Final_Test/Images/*.ppm            with  GT-final_test.csv (in Final_Test/Images/ or root/)

The CSV files are ``;``-separated with columns Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .loading import open_image, register_format

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road",
    "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left",
    "Keep right", "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]  # fmt: skip


def read_image(
    path: str | os.PathLike,
    box: tuple[int, int, int, int] | None = None,
    size: int | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decode an image file to (3, H, W) float in [0, 1]; optional crop box (left, top, right, bottom) and
    square resize (bilinear, antialiased). An image of more than ``max_pixels`` pixels is refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(path, max_pixels) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    if box is not None:
        img = img.crop(box)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    w, h = img.size
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
    return data.permute(2, 0, 1).float() / 255


def center_square(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int, int, int]:
    try:
        with open_image(path, max_pixels) as im:
            w, h = im.size
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    s = min(w, h)
    return ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)


class FileDataset(Dataset):
    """Images read lazily from files: ``load(i) -> (3, size, size)`` tensor, labels in ``targets``."""

    def __init__(
        self,
        name: str,
        files: Sequence[Path],
        targets: Sequence[int],
        classes: Sequence[str],
        load: Callable[[int], torch.Tensor],
        **info,
    ) -> None:
        self.name = name
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self._load = load
        self.info = info

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._load(i), self.targets[i]


def _images_in(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def load_face_folder(
    root: str | os.PathLike,
    size: int = 32,
    *,
    align: bool = False,
    cascade_dir: str | os.PathLike | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    min_images: int = 1,
    max_pixels: int | None = None,
) -> FileDataset:
    """Face photos in ``root/<identity>/``; classes are the sorted folder names.

    Without ``align`` each photo is centre-cropped to a square and resized. With ``align`` the eyes are
    detected (OpenCV Haar cascades, see ``facedetect``) and the face is warped so that they land at
    the canonical position that eyeglass frames expect; photos without a detected eye pair fall back
    to the centre crop (``dataset.info['aligned']`` records which were aligned).
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"face folder {base} does not exist (expected {base}/<identity>/<image files>)")
    classes, files, targets = [], [], []
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        images = _images_in(sub, extensions)
        if len(images) < min_images:
            continue
        classes.append(sub.name)
        files += images
        targets += [len(classes) - 1] * len(images)
    if not files:
        raise InputError(f"no images found under {base}/<identity>/ (extensions: {', '.join(extensions)})")
    aligned: dict[int, bool] = {}
    if align:
        from .facedetect import _require

        _require(cascade_dir)  # fail early with the install hint

    def load(i: int) -> torch.Tensor:
        path = files[i]
        if align:
            from .facedetect import align_face, detect_eyes

            full = read_image(path, max_pixels=max_pixels)
            eyes = detect_eyes(full, cascade_dir=cascade_dir)
            aligned[i] = eyes is not None
            if eyes is not None:
                return align_face(full, eyes, size)
        return read_image(path, center_square(path, max_pixels), size, max_pixels)

    return FileDataset(
        "faces-folder", files, targets, classes, load, root=str(base), size=size, aligned=aligned
    )


def _read_gt(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    need = {"Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"}
    if rows and not need <= set(rows[0]):
        raise InputError(f"{csv_path} lacks GTSRB columns {sorted(need - set(rows[0]))}")
    return rows


def load_gtsrb(
    root: str | os.PathLike,
    split: str = "train",
    size: int | None = 32,
    *,
    crop_roi: bool = True,
    max_pixels: int | None = None,
) -> FileDataset:
    """GTSRB (German Traffic Sign Recognition Benchmark) in its on-disk layout, 43 classes.

    ``split`` is ``train`` (Final_Training) or ``test`` (Final_Test with GT-final_test.csv). With
    ``crop_roi`` each image is cropped to its annotated sign box before resizing to ``size``. Every file
    the CSV files list must exist (checked before anything is read: a missing one is an InputError naming
    it and its CSV file).
    """
    base = Path(root)
    entries: list[tuple[Path, int, tuple[int, int, int, int]]] = []
    if split == "train":
        images = base / "Final_Training" / "Images"
        if not images.is_dir():
            raise InputError(f"GTSRB training images not found: expected {images}/000NN/GT-000NN.csv")
        for folder in sorted(p for p in images.iterdir() if p.is_dir()):
            gt = folder / f"GT-{folder.name}.csv"
            if not gt.is_file():
                raise InputError(f"GTSRB annotation file {gt} is missing")
            entries += _entries(gt, folder)
    elif split == "test":
        images = base / "Final_Test" / "Images"
        candidates = [
            images / "GT-final_test.csv",
            base / "GT-final_test.csv",
            base / "Final_Test" / "GT-final_test.csv",
        ]
        gt = next((c for c in candidates if c.is_file()), None)
        if not images.is_dir() or gt is None:
            raise InputError(
                f"GTSRB test set not found: expected {images}/*.ppm and GT-final_test.csv in one of "
                + ", ".join(str(c.parent) for c in candidates)
            )
        entries = _entries(gt, images)
    else:
        raise InputError(f"GTSRB split must be 'train' or 'test', got {split!r}")
    if not entries:
        raise InputError(f"GTSRB {split} split under {base} lists no images")
    files, targets, boxes = zip(*entries, strict=True)

    def load(i: int) -> torch.Tensor:
        return read_image(files[i], boxes[i] if crop_roi else None, size, max_pixels)

    return FileDataset("gtsrb", files, targets, GTSRB_CLASSES, load, root=str(base), split=split, size=size)


def _entries(gt: Path, folder: Path) -> list[tuple[Path, int, tuple[int, int, int, int]]]:
    """The (file, class, box) rows of GTSRB annotation file ``gt``; a listed file that is missing, or a
    row that is not a number where one belongs, is an InputError naming ``gt``."""
    rows = _read_gt(gt)
    try:
        entries = [(folder / r["Filename"], int(r["ClassId"]), _roi(r)) for r in rows]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{gt}: a row holds a non-integer ClassId or Roi value ({exc})") from exc
    bad = [e[1] for e in entries if not 0 <= e[1] < len(GTSRB_CLASSES)]
    if bad:
        raise InputError(f"{gt}: GTSRB ClassId {bad[0]} is outside [0, {len(GTSRB_CLASSES)})")
    missing = [str(e[0]) for e in entries if not e[0].is_file()]
    if missing:
        raise InputError(
            f"{gt} lists {len(missing)} image file(s) that do not exist (first: {missing[0]}); restore them "
            "or remove their rows"
        )
    return entries


def _roi(row: dict[str, str]) -> tuple[int, int, int, int]:
    """GTSRB's inclusive ROI corners -> a PIL crop box (right / bottom exclusive)."""
    x1, y1, x2, y2 = (int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    return x1, y1, x2 + 1, y2 + 1


# --------------------------------------------------------------------- manifest formats
def _preprocessing(manifest: dict, allowed: Sequence[str]) -> dict:
    pre = dict(manifest.get("preprocessing") or {})
    unknown = sorted(set(pre) - set(allowed))
    if unknown:
        raise InputError(
            f"{manifest.get('name', 'manifest')}: unknown preprocessing key(s) {unknown}; "
            f"this format takes {', '.join(allowed)}"
        )
    return pre


@register_format("face-folder")
def face_folder_format(manifest: dict, split: str, root: Path) -> FileDataset:
    """Manifest entry point (``format: face-folder``): ``root/<identity>/<images>``.

    ``splits`` may map a split to a sub-folder of ``root`` laid out the same way (``{train: train,
    test: test}``); without it the whole folder is the ``test`` split and there is no ``train`` split
    (universal attacks then fit on the evaluation images, with a warning from the runner).
    """
    pre = _preprocessing(manifest, ("size", "align", "cascade_dir", "min_images", "max_pixels"))
    splits = manifest.get("splits") or {}
    if splits:
        if split not in splits:
            raise InputError(f"{manifest.get('name')}: no '{split}' in splits ({', '.join(splits)})")
        folder = root / str(splits[split])
    elif split == "test":
        folder = root
    else:
        raise InputError(
            f"{manifest.get('name')}: a face folder has only a test split; add splits: {{train: DIR, test: DIR}}"
        )
    ds = load_face_folder(
        folder,
        int(pre.get("size", 32)),
        align=bool(pre.get("align", False)),
        cascade_dir=pre.get("cascade_dir"),
        min_images=int(pre.get("min_images", 1)),
        max_pixels=pre.get("max_pixels"),
    )
    if manifest.get("classes"):
        if len(manifest["classes"]) != len(ds.classes):
            raise InputError(
                f"{manifest.get('name')}: the manifest lists {len(manifest['classes'])} identities, "
                f"{folder} holds {len(ds.classes)} ({', '.join(ds.classes)})"
            )
        ds.classes = list(manifest["classes"])
    return ds


@register_format("gtsrb")
def gtsrb_format(manifest: dict, split: str, root: Path) -> FileDataset:
    """Manifest entry point (``format: gtsrb``): the official layout, ``train`` or ``test`` split."""
    pre = _preprocessing(manifest, ("size", "crop_roi", "max_pixels"))
    size = pre.get("size", 32)
    return load_gtsrb(root, split, None if size is None else int(size), crop_roi=bool(pre.get("crop_roi", True)),
                      max_pixels=pre.get("max_pixels"))  # fmt: skip
