"""Built-in faces / signs data, generated masks, eye detection and the on-disk loaders (face folders, GTSRB)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from robustkit.builtin.faces import IDENTITIES, faces
from robustkit.builtin.signs import CLASSES as SIGN_CLASSES
from robustkit.builtin.zoo import ZOO
from robustkit.data.facedetect import align_face, detect_eyes, haar_available, place_eyeglass
from robustkit.data.folders import GTSRB_CLASSES, load_face_folder, load_gtsrb, read_image
from robustkit.data.masks import (
    STICKERS,
    canonical_eyes,
    eyeglass_mask,
    load_mask,
    resolve_mask,
    sticker_mask,
)
from robustkit.data.synthetic import BUILTIN
from robustkit.errors import ConfigError, InputError


def save_png(t: torch.Tensor, path: Path, fmt: str | None = None) -> None:
    from PIL import Image

    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8)
    mode = "L" if arr.shape[0] == 1 else "RGB"
    data = arr[0] if mode == "L" else arr.permute(1, 2, 0).contiguous()
    Image.frombytes(mode, (data.shape[1], data.shape[0]), bytes(data.flatten().tolist())).save(
        path, format=fmt
    )


# ---------------------------------------------------------------------- built-in data
@pytest.mark.parametrize("name, classes", [("faces", IDENTITIES), ("signs", SIGN_CLASSES)])
def test_builtin_datasets_are_deterministic_and_registered(name, classes):
    make = BUILTIN.get(name)
    a, b = make("test", n=12), make("test", n=12)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (12, 3, 32, 32) and a.x.min() >= 0 and a.x.max() <= 1
    assert a.classes == classes and sorted(set(a.y.tolist())) == list(range(10))
    assert not torch.equal(make("train", n=2).x, a.x[:2])
    assert torch.equal(make("test", n=14).x[:12], a.x)  # a sample depends only on (seed, split, index)


def test_zoo_entries_registered():
    assert "faces-resnet" in ZOO and "signs-resnet" in ZOO
    assert ZOO.create("faces-resnet").dataset == "faces" and ZOO.create("signs-resnet").dataset == "signs"


def test_faces_keep_the_eyes_at_the_canonical_position():
    """The pupils (darkest spots) of every face sit on the canonical eye centres."""
    ds = faces("test", n=10, size=64)
    eyes = canonical_eyes(64)
    for img in ds.x:
        gray = img.mean(0)
        for ex, ey in eyes.tolist():
            r0, c0 = round(ey), round(ex)
            patch = gray[r0 - 4 : r0 + 5, c0 - 4 : c0 + 5]
            r, c = divmod(int(patch.argmin()), 9)
            assert abs(r0 - 4 + r - ey) <= 1.5 and abs(c0 - 4 + c - ex) <= 1.5


# ---------------------------------------------------------------------- masks
def test_generated_masks():
    frame = eyeglass_mask(32)
    assert frame.shape == (1, 32, 32) and 0.03 < float(frame.mean()) < 0.12
    for ex, ey in canonical_eyes(32).round().long().tolist():
        assert float(frame[0, ey, ex]) < 0.5  # lenses stay transparent
    for name in STICKERS:
        m = sticker_mask(name, 32)
        assert m.shape == (1, 32, 32) and 0.02 < float(m.mean()) < 0.15
        assert torch.allclose(m, m.flip(-1), atol=1e-6)  # centred, symmetric
    with pytest.raises(ConfigError, match="did you mean 'two-bars'"):
        sticker_mask("two-bar")


def test_mask_from_image_file(tmp_path):
    m = torch.zeros(1, 16, 16)
    m[:, 4:8, 2:14] = 1
    save_png(m, tmp_path / "m.png")
    loaded = load_mask(tmp_path / "m.png", 16)
    assert torch.equal(loaded, m)
    assert resolve_mask(str(tmp_path / "m.png"), 32, "sticker").shape == (1, 32, 32)
    with pytest.raises(InputError):
        load_mask(tmp_path / "missing.png", 16)


# ---------------------------------------------------------------------- eyes
def test_eyeglass_follows_the_eyes():
    """Placing the frame on the canonical eyes reproduces the canonical mask; moved eyes move it."""
    canon = canonical_eyes(32)[None]
    same = place_eyeglass(canon, (32, 32))
    assert torch.allclose(same[0], eyeglass_mask(32), atol=1e-4)
    moved = place_eyeglass(canon * 2 + 0.5, (64, 64))
    assert torch.allclose(moved[0], eyeglass_mask(64), atol=0.35)  # same frame at twice the size
    assert abs(float(moved.sum()) - 4 * float(same.sum())) < 0.1 * 4 * float(same.sum())


def test_align_face_moves_eyes_to_the_canonical_position():
    img = torch.zeros(3, 100, 80)
    img[:, 40, 25] = 1
    img[:, 44, 55] = 1
    out = align_face(img, torch.tensor([[25.0, 40.0], [55.0, 44.0]]), 64)
    for ex, ey in canonical_eyes(64).tolist():
        region = out[0, math.floor(ey) - 1 : math.floor(ey) + 3, math.floor(ex) - 1 : math.floor(ex) + 3]
        assert float(region.max()) > 0.2


def drawn_face(size: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey photo-like face with shaded eyes and lids (what Haar eye cascades respond to), and its eye centres."""
    import cv2
    import numpy as np

    img = np.full((size, size), 90, np.uint8)
    cv2.ellipse(img, (size // 2, int(size * 0.55)), (int(size * 0.33), int(size * 0.43)), 0, 0, 360, 185, -1)
    eyes = []
    for sx in (-1, 1):
        ex, ey = int(size / 2 + sx * 0.15 * size), int(size * 0.44)
        eyes.append((ex, ey))
        w = int(0.16 * size / 2)
        cv2.line(
            img, (ex - w, ey - int(0.08 * size)), (ex + w, ey - int(0.085 * size)), 60, max(2, size // 40)
        )
        cv2.ellipse(img, (ex, ey), (w, w // 2), 0, 0, 360, 235, -1)
        cv2.circle(img, (ex, ey), int(0.072 * size / 2) + 1, 70, -1)
        cv2.circle(img, (ex, ey), int(0.072 * size / 5), 15, -1)
        cv2.ellipse(img, (ex, ey), (w, w // 2), 0, 180, 360, 40, max(1, size // 100))
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    t = torch.from_numpy(img).float().div(255)[None].expand(3, size, size).clone()
    return t, torch.tensor(eyes, dtype=torch.float32)


@pytest.mark.skipif(
    not haar_available(), reason="this OpenCV build ships no Haar cascades (OpenCV 5); see facedetect"
)
def test_haar_eye_detection_on_a_drawn_face(tmp_path):
    img, truth = drawn_face()
    found = detect_eyes(img)
    assert found is not None
    assert (found - truth).abs().max() < 0.05 * img.shape[-1]
    # a folder of such photos aligns them so that the eyes land on the canonical position
    for person in ("p1", "p2"):
        (tmp_path / person).mkdir()
        save_png(img, tmp_path / person / "a.png")
    ds = load_face_folder(tmp_path, 32, align=True)
    x, _ = ds[0]
    assert ds.info["aligned"][0]
    again = detect_eyes(torch.nn.functional.interpolate(x[None], size=192, mode="bilinear")[0])
    if again is not None:
        assert (again / 6 - canonical_eyes(32)).abs().max() < 2.0


def test_missing_cascades_raise_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HAAR_DIR", str(tmp_path))
    assert not haar_available()
    with pytest.raises(ConfigError, match="Haar cascades"):
        detect_eyes(torch.rand(3, 64, 64))


# ---------------------------------------------------------------------- loaders
def test_face_folder_loader(tmp_path):
    g = torch.Generator().manual_seed(0)
    for person, n in (("alice", 3), ("bob", 2), ("empty", 0)):
        (tmp_path / person).mkdir()
        for i in range(n):
            save_png(torch.rand(3, 40, 30, generator=g), tmp_path / person / f"{i}.jpg", "PNG")
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    ds = load_face_folder(tmp_path, size=16)
    assert ds.classes == ["alice", "bob"] and ds.targets == [0, 0, 0, 1, 1] and len(ds) == 5
    x, label = ds[3]
    assert x.shape == (3, 16, 16) and label == 1 and x.min() >= 0 and x.max() <= 1
    with pytest.raises(InputError, match="does not exist"):
        load_face_folder(tmp_path / "nope")


def write_gtsrb(root: Path, classes=(0, 14, 42), per_class: int = 2) -> dict[str, torch.Tensor]:
    """A tiny GTSRB tree in the official layout: .ppm images, ';' CSVs with ROIs."""
    header = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
    g = torch.Generator().manual_seed(1)
    images: dict[str, torch.Tensor] = {}
    test_rows = []
    for cid in classes:
        folder = root / "Final_Training" / "Images" / f"{cid:05d}"
        folder.mkdir(parents=True)
        rows = []
        for i in range(per_class):
            img = torch.rand(3, 30 + i, 34, generator=g)
            name = f"00000_{i:05d}.ppm"
            save_png(img, folder / name, "PPM")
            images[f"train/{cid}/{i}"] = img
            rows.append([name, 34, 30 + i, 5, 5, 28, 24 + i, cid])
            test_name = f"{cid:05d}{i}.ppm"
            (root / "Final_Test" / "Images").mkdir(parents=True, exist_ok=True)
            save_png(img, root / "Final_Test" / "Images" / test_name, "PPM")
            test_rows.append([test_name, 34, 30 + i, 5, 5, 28, 24 + i, cid])
        with open(folder / f"GT-{cid:05d}.csv", "w", newline="") as fh:
            csv.writer(fh, delimiter=";").writerows([header, *rows])
    with open(root / "Final_Test" / "Images" / "GT-final_test.csv", "w", newline="") as fh:
        csv.writer(fh, delimiter=";").writerows([header, *test_rows])
    return images


def test_gtsrb_loader_reads_the_official_layout(tmp_path):
    images = write_gtsrb(tmp_path)
    train = load_gtsrb(tmp_path, "train", size=24)
    assert train.classes == GTSRB_CLASSES and len(GTSRB_CLASSES) == 43
    assert train.targets == [0, 0, 14, 14, 42, 42]
    x, y = train[2]
    assert x.shape == (3, 24, 24) and y == 14
    raw = load_gtsrb(tmp_path, "train", size=None, crop_roi=True)[0][0]
    assert torch.allclose(
        raw, (images["train/0/0"][:, 5:25, 5:29] * 255).round() / 255, atol=1e-6
    )  # ROI is inclusive
    test = load_gtsrb(tmp_path, "test", size=24)
    assert test.targets == train.targets and len(test) == 6
    assert torch.equal(read_image(test.files[0]), read_image(train.files[0]))
    with pytest.raises(InputError, match="split"):
        load_gtsrb(tmp_path, "val")
    with pytest.raises(InputError, match="not found"):
        load_gtsrb(tmp_path / "missing", "train")


def test_manifests_load_through_their_registered_formats(tmp_path):
    """``--data gtsrb`` / ``--data faces-folder`` with ``--data-root`` reach the loaders above."""
    from robustkit.data.loading import FORMATS, load_dataset, read_manifest

    assert {"gtsrb", "face-folder"} <= set(FORMATS.names())
    write_gtsrb(tmp_path / "gtsrb")
    test = load_dataset("gtsrb", "test", root=tmp_path / "gtsrb")
    assert len(test) == 6 and test.classes == GTSRB_CLASSES and test[0][0].shape == (3, 32, 32)
    assert load_dataset("gtsrb", "train", root=tmp_path / "gtsrb").targets == test.targets
    g = torch.Generator().manual_seed(2)
    for person in ("ann", "ben"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        save_png(torch.rand(3, 20, 20, generator=g), tmp_path / "faces" / person / "0.png")
    manifest, _ = read_manifest("faces-folder")
    path = tmp_path / "faces.yaml"
    import yaml

    path.write_text(yaml.safe_dump(manifest | {"preprocessing": {"size": 16}}))
    faces_ds = load_dataset(str(path), "test", root=tmp_path / "faces")
    assert faces_ds.classes == ["ann", "ben"] and faces_ds[1][0].shape == (3, 16, 16)
    with pytest.raises(InputError, match="splits"):
        load_dataset(str(path), "train", root=tmp_path / "faces")
