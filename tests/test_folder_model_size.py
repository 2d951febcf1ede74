"""A folder given as ``--data`` takes its input size from the model (zoo metadata, timm's pretrained_cfg,
torchvision's weights transforms, RobustBench's dataset, an ``input_size`` attribute of your own model),
else keeps the images' own size; the run states which in one line. Each test checks the tensors the
model actually received."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from robustkit.api import evaluate
from robustkit.data.loading import load_dataset
from robustkit.errors import ConfigError
from robustkit.models import loading
from robustkit.models.inputsize import declared_input, parse_shape, torchvision_input, video_input

pytestmark = pytest.mark.usefixtures("one_thread")

FGSM = {"attacks": [{"attack": "fgsm", "eps": 2 / 255}]}


def _images(root, classes=2, size=(20, 20), n=1):
    """``root/c<k>/<i>.png``: ``n`` flat images of ``size`` (H, W) per class."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), 40 + 20 * c + 7 * i, np.uint8)).save(
                root / f"c{c}" / f"{i}.png"
            )
    return root


class Pooled(nn.Module):
    """Takes any frame size (global pooling): what it receives is what the data gave it."""

    def __init__(self, classes: int = 2, dims: int = 2) -> None:
        super().__init__()
        conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
        self.body = nn.Sequential(
            conv(3, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(4, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def sized():
    """A factory whose model declares its input (``input_size``, as timm writes it: C, H, W)."""
    torch.manual_seed(0)
    net = Pooled()
    net.input_size = (3, 24, 24)
    return net


def unsized():
    torch.manual_seed(0)
    return Pooled()


def sized_video():
    """A video model declaring clips of 4 frames of 16x16 (C, T, H, W)."""
    torch.manual_seed(0)
    net = Pooled(dims=3)
    net.input_size = (3, 4, 16, 16)
    return net


@pytest.fixture
def received(monkeypatch):
    """The shapes of every input the evaluated model receives (a hook on the model ``load_model`` returns)."""
    shapes: list[tuple[int, ...]] = []
    real = loading.load_model

    def spy(*args, **kwargs):
        net, info = real(*args, **kwargs)
        net.register_forward_pre_hook(lambda _m, inputs: shapes.append(tuple(inputs[0].shape[1:])))
        return net, info

    monkeypatch.setattr(loading, "load_model", spy)
    return shapes


def _evaluate(tmp_path, caplog, data, model, **options):
    caplog.set_level(logging.INFO, logger="robustkit")
    res = evaluate(model=model, data=str(data), suite=FGSM, out=tmp_path / "out", device="cpu", progress=False,
                   report=False, batch_size=16, **options)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("input ")]
    assert len(said) == 1, said  # one line, stated once
    assert res.summary["input"]["line"] == said[0]
    resolved = yaml.safe_load((res.run_dir / "config.yaml").read_text())["resolved"]
    assert resolved["input"] == said[0]
    return res, said[0]


def test_a_zoo_model_gets_its_training_size(tmp_path, caplog, received):
    data = _images(tmp_path / "pics", classes=10, size=(20, 20))  # shapes-resnet has 10 classes
    res, line = _evaluate(tmp_path, caplog, data, "shapes-resnet")
    assert set(received) == {(3, 32, 32)}  # upsampled from 20x20 to what shapes-resnet was trained on
    assert line == "input 32x32 from the zoo model shapes-resnet's metadata (trained on shapes)"
    assert res.summary["input"]["from"] == "model" and res.summary["n_samples"] == 10


def test_a_timm_architecture_gets_its_pretrained_cfg_size(tmp_path, caplog, received):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    arch = timm.create_model("test_resnet", pretrained=False, num_classes=2)  # nothing downloaded
    save_file(arch.state_dict(), tmp_path / "w.safetensors")
    assert arch.pretrained_cfg["input_size"] == (3, 160, 160)
    data = _images(tmp_path / "pics", size=(20, 30))
    res, line = _evaluate(tmp_path, caplog, data, "timm:test_resnet", weights=tmp_path / "w.safetensors")
    assert set(received) == {(3, 160, 160)}
    assert line == "input 160x160 from timm pretrained_cfg of test_resnet.r160_in1k"
    # resized (short side) to floor(160 / crop_pct 0.95) = 168 and centre-cropped, as timm's eval transform
    assert res.summary["input"]["resize"] == 168
    assert "timm pretrained_cfg" in res.summary["normalization"]["source"]  # both from the same metadata


def test_a_factory_declares_its_size_with_an_input_size_attribute(tmp_path, caplog, received):
    data = _images(tmp_path / "pics", size=(20, 20))
    res, line = _evaluate(tmp_path, caplog, data, "tests.test_folder_model_size:sized")
    assert set(received) == {(3, 24, 24)}
    assert line == "input 24x24 from the model's input_size attribute (Pooled)"


def test_a_factory_without_one_keeps_the_images_own_size(tmp_path, caplog, received):
    data = _images(tmp_path / "pics", size=(20, 26))
    res, line = _evaluate(tmp_path, caplog, data, "tests.test_folder_model_size:unsized")
    assert set(received) == {(3, 20, 20)}  # the shorter side, centre-cropped: nothing upsampled
    assert line == "input 20x20: the images' own size (the model declares no input size)"
    assert res.summary["input"]["from"] == "data"


def test_a_video_model_sets_frame_size_and_clip_length(tmp_path, caplog, received):
    from tests.test_video_data import gray_frames, write_pyav

    for c in range(2):
        write_pyav(tmp_path / "clips" / f"c{c}" / "a.avi", gray_frames(12, offset=60 * c))
    res, line = _evaluate(tmp_path, caplog, tmp_path / "clips", "tests.test_folder_model_size:sized_video")
    assert set(received) == {(3, 4, 16, 16)}  # not the folder defaults (16 frames of 112x112)
    assert line == "input 4 frames of 16x16 from the model's input_size attribute (Pooled)"


def test_a_manifests_own_size_wins_and_the_line_says_so(tmp_path):
    from robustkit.evaluation.inputs import fit_to_model, model_input

    root = _images(tmp_path / "pics", size=(20, 20))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"format: folder\nroot: {root}\npreprocessing: {{size: 12}}\n")
    ds, record = fit_to_model(str(manifest), "test", None, load_dataset(str(manifest)), sized(), {})
    assert ds[0][0].shape == (3, 12, 12) and record["from"] == "manifest"
    assert record["line"] == (
        "input 12x12 from the manifest's preprocessing (the model declares 24x24, from the model's input_size "
        "attribute (Pooled))"
    )
    assert model_input(record) is None  # another split is read as the manifest says, not at the model's size
    ds, record = fit_to_model(str(root), "test", None, load_dataset(str(root)), sized(), {})
    assert model_input(record) == {"size": 24} and load_dataset(str(root), model_input={"size": 24})[0][0].shape == (
        3, 24, 24)  # fmt: skip
    # fixed-size data (built-in, tensors) does not follow the model and states nothing
    assert fit_to_model("shapes", "test", None, load_dataset("shapes", n=4), sized(), {})[1] is None


def test_every_kind_of_model_declares_where_its_size_comes_from():
    # the source's record first, then an input_size attribute (on the model or what it wraps), then timm's cfg
    net = nn.Sequential()
    net.pretrained_cfg = {"architecture": "x", "input_size": (3, 64, 64), "crop_pct": 0.875}
    assert (declared_input(net).height, declared_input(net).resize) == (64, 73)
    net.input_size = 48
    assert declared_input(net).height == 48
    assert (
        declared_input(net, {"input": {"size": [32, 32], "source": "zoo"}}).describe()
        == "input 32x32 from zoo"
    )
    from robustkit.models.normalized import Normalized

    assert declared_input(Normalized(net, (0.5,), (0.5,))).height == 48  # seen through the wrapper
    assert declared_input(nn.Sequential()) is None
    assert parse_shape((3, 8, 20, 30), "x").dims == "8 frames of 20x30"
    with pytest.raises(ConfigError, match="expected an input size N, \\(H, W\\)"):
        parse_shape("big", "the model's input_size attribute")
    tv = torchvision_input("resnet18")
    assert tv == {"size": [224, 224], "resize": 256, "frames": None,
                  "source": "torchvision ResNet18_Weights.IMAGENET1K_V1 transforms"}  # fmt: skip
    assert video_input("r3d_18")["frames"] == 16 and video_input("r3d_18")["size"] == [112, 112]
    assert video_input("x3d_xs")["frames"] == 4 and video_input("x3d_xs")["size"] == [160, 160]
    from robustkit.models.loading import load_model

    _, info = load_model("shapes-video-r3d", progress=False)
    assert declared_input(None, info).dims == "8 frames of 32x32"


@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="pip install robustbench")
def test_a_robustbench_model_declares_its_datasets_size(tmp_path, monkeypatch):
    import robustkit.models.robustbench as rb

    monkeypatch.setenv(rb.DIR_VARIABLE, str(tmp_path / "models"))
    models, datasets, threats = rb.zoo()
    path = tmp_path / "models" / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    path.parent.mkdir(parents=True)
    torch.save(
        models[datasets("cifar10")][threats("Linf")]["Sehwag2021Proxy_R18"]["model"]().state_dict(), path
    )
    model, info = loading.load_model("robustbench:cifar10/Linf/Sehwag2021Proxy_R18", num_classes=10)
    assert declared_input(model, info).describe() == "input 32x32 from RobustBench's cifar10 models"


def test_the_report_header_shows_the_input_size(tmp_path, caplog):
    data = _images(tmp_path / "pics", size=(20, 20))
    res = evaluate(model="tests.test_folder_model_size:sized", data=str(data), suite=FGSM, out=tmp_path / "out",
                   device="cpu", progress=False, report=True)  # fmt: skip
    html = res.report.read_text()
    assert "input size" in html and "24x24 from the model&#39;s input_size attribute" in html
    assert json.loads((res.run_dir / "summary.json").read_text())["input"]["size"] == [24, 24]
