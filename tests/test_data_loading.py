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
