"""Built-in data and real on-disk layouts (CIFAR-10 pickles, ImageFolder), written by the tests."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from robustkit.builtin.shapes import shapes
from robustkit.data.loading import load_dataset
from robustkit.errors import ConfigError, InputError, UnsafeCheckpointError


def test_shapes_is_deterministic_and_in_range():
    a, b = shapes("test", n=30), shapes("test", n=30)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (30, 3, 32, 32) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert a.x.min() >= 0 and a.x.max() <= 1
    assert not torch.equal(shapes("train", n=30).x, a.x)
    assert torch.equal(shapes("test", n=50).x[:30], a.x)  # a sample depends only on its index
    assert sorted(set(a.y.tolist())) == list(range(10))


def _write_cifar(root, n=20):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
            b"batch_label": b"x",
        }
        (root / name).write_bytes(pickle.dumps(batch))


def test_cifar10_python_layout(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    test = load_dataset("cifar10", "test", root=tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path / "cifar-10-batches-py")
    assert len(test) == 20 and len(train) == 100
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1 and 0 <= y < 10
    assert test.classes[0] == "airplane"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_imagefolder_layout_and_corrupt_files(tmp_path):
    for cls in ["cat", "dog"]:
        d = tmp_path / "val" / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "val" / "dog" / "broken.jpg").write_bytes(b"not an image")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: tiny\nformat: imagefolder\nroot: {tmp_path}\npreprocessing: {{size: 24}}\n")
    ds = load_dataset(str(manifest), "test")
    assert (
        ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.skipped and ds.skipped[0].endswith("broken.jpg")
    )
    x, y = ds[5]
    assert x.shape == (3, 24, 24) and y == 1


def test_missing_dataset_and_unknown_names(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("cifar10", "test", root=tmp_path / "nope")
    with pytest.raises(ConfigError, match="did you mean 'shapes'"):
        load_dataset("shapez")
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: e\nformat: imagefolder\nroot: {empty}\n")
    with pytest.raises(InputError, match="no class sub-folders"):
        load_dataset(str(manifest))
    manifest.write_text(f"name: e\nformat: imagefolder\nroot: {empty}\nsize: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'size'"):
        load_dataset(str(manifest))


@pytest.mark.parametrize("name", ["shapes", "faces", "signs", "shapes-video"])
def test_builtin_first_n_is_a_prefix_of_the_split(name):
    from robustkit.data.loading import load_dataset

    small, larger = load_dataset(name, "train", n=3), load_dataset(name, "train", n=6)
    assert len(small) == 3 and len(larger) == 6
    assert torch.equal(small.x, larger.x[:3]) and torch.equal(small.y, larger.y[:3])


# ----------------------------------------------------------------------------- a folder as --data (issue 19)
def _images(root, classes=("cat", "dog"), size=(20, 28), n=2):
    for c, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), 50 * i + 100 * c, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_a_folder_of_images_is_data_at_its_own_size_named_after_it(tmp_path):
    root = _images(tmp_path / "myfolder")
    ds = load_dataset(str(root))
    assert ds.name == "myfolder" and ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 20, 20) and y == 1  # the images' own (shorter) side: never upsampled to 224
    assert abs(float(x.mean()) - 150 / 255) < 1e-6
    with pytest.raises(ConfigError, match="no 'train' split"):  # the folder is the test split
        load_dataset(str(root), "train")
    _images(root / "train", n=1)  # with train/ and test/ inside, each is its split
    _images(root / "test", n=3)
    assert len(load_dataset(str(root), "train")) == 2 and len(load_dataset(str(root), "test")) == 6


def test_a_folder_of_videos_per_class_is_video_data(tmp_path):
    from tests.test_video_data import gray_frames, write_pyav

    for c, cls in enumerate(["jump", "run"]):
        write_pyav(tmp_path / "clips" / cls / "a.avi", gray_frames(12, offset=60 * c))
    ds = load_dataset(str(tmp_path / "clips"))
    assert ds.name == "clips" and ds.classes == ["jump", "run"] and len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 16, 112, 112) and y == 1  # the video defaults (UCF-101's 16 frames at 112)
    manifest = tmp_path / "v.yaml"
    manifest.write_text(f"name: mine\nformat: videofolder\nroot: {tmp_path / 'clips'}\npreprocessing: "
                        "{frames: 4, size: 16, stride: 1}\n")  # fmt: skip
    ds = load_dataset(str(manifest))
    assert ds.name == "mine" and ds[0][0].shape == (3, 4, 16, 16)


def test_a_manifests_name_names_the_dataset_and_the_run(tmp_path):
    from robustkit.api import evaluate

    root = _images(tmp_path / "imgs", size=(32, 32), n=3)
    manifest = tmp_path / "whatever.yaml"
    manifest.write_text(f"name: street-signs\nformat: imagefolder\nroot: {root}\n")
    assert load_dataset(str(manifest)).name == "street-signs"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    res = evaluate(model=net, model_name="lin", data=str(manifest), suite={"attacks": [{"attack": "fgsm"}]},
                   out=tmp_path / "out", device="cpu", progress=False, report=False)  # fmt: skip
    assert res.run_dir.name == "lin-street-signs-custom" and res.summary["data"] == "street-signs"


def test_image_size_limit_is_configurable_and_names_the_file(tmp_path):
    root = _images(tmp_path / "imgs", size=(40, 40), n=1)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"format: imagefolder\nroot: {root}\npreprocessing: {{max_pixels: 1000}}\n")
    with pytest.raises(InputError, match=r"0\.png has 1,600 pixels, over the limit of 1,000 pixels"):
        len(load_dataset(str(manifest)))
    manifest.write_text(f"format: imagefolder\nroot: {root}\npreprocessing: {{max_pixels: 1600}}\n")
    assert len(load_dataset(str(manifest))) == 2
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == 89_478_485  # PIL's own guard is restored for everyone else


def test_datasets_readme_shows_a_valid_manifest_for_every_format(tmp_path):
    import re
    from pathlib import Path

    import yaml

    from robustkit.data.loading import FORMATS, check_manifest

    text = (Path(__file__).resolve().parents[1] / "datasets" / "README.md").read_text()
    shown = set()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        manifest = check_manifest(yaml.safe_load(block), "README")  # each example passes the checks
        shown.add(manifest["format"])
    assert shown | {"hmdb51"} == set(FORMATS.names())  # hmdb51 is described as ucf101's twin
    assert "hmdb51" in text and "--data ./myfolder" in text


def test_every_builtin_manifest_passes_its_checks():
    from robustkit.data.loading import manifest_names, read_manifest

    for name in manifest_names():
        manifest, path = read_manifest(name)
        assert manifest["format"] and path.name == f"{name}.yaml"
