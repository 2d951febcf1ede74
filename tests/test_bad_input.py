"""The bad-input catalogue: each case gives a clear message, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from robustkit.api import evaluate
from robustkit.cli import main
from robustkit.errors import ConfigError, InputError
from robustkit.files import inside


def _run(tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = main(["evaluate", "--out", str(out), "--quiet", "--limit", "8", *args])
    err = capsys.readouterr().err
    return code, err, out


def _suite(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text,message",
    [
        ("attacks: [{attack: pgd, eps: [1/255}", "malformed YAML"),
        ("attacks: [{attack: pgd, epz: 0.1}]", "did you mean 'eps'"),
        ("attacks: [{attack: pgdx}]", "did you mean 'pgd'"),
        ("attacks: [{attack: pgd, eps: abc}]", "eps must be a number"),
        ("attacks: [{attack: pgd, eps: -0.1}]", "eps must be a number >= 0"),
        ("attacks: [{attack: pgd, eps: 8}]", "did you mean 8/255"),
        ("attacks: [{attack: pgd, steps: 0}]", "steps must be"),
        ("attacks: [{attack: pgd, steps: ten}]", "steps must be"),
    ],
)
def test_bad_recipes(tmp_path, capsys, text, message):
    code, err, out = _run(tmp_path, capsys, "--suite", _suite(tmp_path, text))
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_and_empty_dataset_dirs(tmp_path, capsys):
    code, err, out = _run(tmp_path, capsys, "--data", "cifar10", "--data-root", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and "does not exist" in err and not out.exists()
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: e\nformat: imagefolder\nroot: {tmp_path / 'empty'}\n")
    code, err, out = _run(tmp_path, capsys, "--data", str(manifest))
    assert code == 2 and "no class sub-folders" in err and not out.exists()


def test_labels_out_of_range(tmp_path, capsys):
    root = tmp_path / "cifar"
    root.mkdir()
    rng = np.random.default_rng(0)
    (root / "test_batch").write_bytes(
        pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 12, 3]})
    )
    code, err, out = _run(
        tmp_path,
        capsys,
        "--data",
        "cifar10",
        "--data-root",
        str(root),
        "--model",
        "tests.test_bad_input:cifar_like",
    )
    assert code == 2 and "labels" in err and "outside" in err and not out.exists()


def cifar_like():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def nan_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), _Lambda(lambda z: z * float("nan")))


def wrong_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))


def probability_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Softmax(dim=1))


def not_a_tensor():
    return _Lambda(lambda x: {"logits": x.mean()})


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "factory,message",
    [
        ("nan_model", "NaN"),
        ("wrong_classes", "returns 7 classes but the dataset has 10"),
        ("probability_model", "returns probabilities"),
        ("not_a_tensor", "logits tensor"),
    ],
)
def test_misbehaving_models(tmp_path, capsys, factory, message):
    code, err, out = _run(tmp_path, capsys, "--model", f"tests.test_bad_input:{factory}")
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_inputs_outside_unit_range_or_wrong_shape(tmp_path):
    x, y = torch.rand(4, 3, 32, 32) * 3, torch.zeros(4, dtype=torch.long)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        evaluate(model=cifar_like(), data=(x, y), out=tmp_path, progress=False)
    with pytest.raises(InputError, match="shape"):
        evaluate(model=cifar_like(), data=(torch.rand(4, 32, 32), y), out=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_checkpoints(tmp_path, capsys):
    import torchvision

    good = torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict()
    torch.save(good, tmp_path / "good.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:1000])
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc.weight": Payload()}, f)
    for name, message in [
        ("trunc.pt", "truncated"),
        ("wrong.safetensors", "does not fit"),
        ("evil.pt", "could run code"),
    ]:
        code, err, out = _run(tmp_path, capsys, "--model", "resnet18", "--weights", str(tmp_path / name))
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert not out.exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path, capsys):
    for c, cls in enumerate(["a", "b"]):
        d = tmp_path / "imgs" / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 60 * i + 100 * c, dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"name: tiny\nformat: imagefolder\nroot: {tmp_path / 'imgs'}\npreprocessing: {{size: 32}}\n"
    )
    code, err, out = _run(
        tmp_path,
        capsys,
        "--data",
        str(manifest),
        "--model",
        "tests.test_bad_input:two_class",
        "--suite",
        _suite(tmp_path, "attacks: [{attack: fgsm, eps: 1/255}]"),
    )
    assert code == 0, err
    import json

    summary = json.loads(next(out.iterdir()).joinpath("summary.json").read_text())
    assert (
        summary["n_samples"] == 6
        and len(summary["skipped_files"]) == 1
        and summary["skipped_files"][0].endswith("bad.png")
    )


def two_class():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))


def test_output_paths_cannot_escape(tmp_path):
    with pytest.raises(ConfigError, match="escapes the run directory"):
        inside(tmp_path, "../elsewhere")
    assert inside(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_full_disk_while_writing(tmp_path, capsys, monkeypatch, shapes_model):
    from robustkit.evaluation import runner

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner, "atomic_write", full)
    code, err, out = _run(
        tmp_path, capsys, "--suite", _suite(tmp_path, "attacks: [{attack: fgsm, eps: 1/255}]")
    )
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not list(out.rglob("summary.json")) and not list(out.rglob("report.html"))


def test_internal_errors_exit_1_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    from robustkit.evaluation import config

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(config, "load_suite", boom)
    code, err, _ = _run(tmp_path, capsys)
    assert code == 1 and "internal error" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "evaluate", "--out", str(tmp_path / "o"), "--quiet"])
