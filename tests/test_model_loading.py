"""Bringing your own model: a factory in the current directory, --normalize, checkpoint layouts, head
mismatches, pickled models, model errors (exit 2 naming the model), clean accuracy at chance."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustkit.api import evaluate
from robustkit.cli import main
from robustkit.errors import ConfigError, ModelError, UnsafeCheckpointError
from robustkit.evaluation.config import RunConfig
from robustkit.evaluation.metrics import chance_finding
from robustkit.models.checkpoint import align_keys, load_into, load_state
from robustkit.models.loading import load_model
from robustkit.models.normalized import IMAGENET_MEAN, IMAGENET_STD, Normalized, parse_normalize

SUITE = "attacks: [{attack: fgsm, eps: 1/255}]"


def _suite(tmp_path, text=SUITE):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return str(path)


def _run(tmp_path, capsys, *args):
    code = main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", "--limit", "8", *args])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def linear(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, classes))


# ----------------------------------------------------------------------------- the current directory
FACTORY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
"""


@pytest.fixture
def console_script_path(tmp_path, monkeypatch):
    """The current directory holds the user's module and is not on sys.path, as under the console script
    (``python -m`` and pytest put it there; the ``robustkit`` entry point does not)."""
    (tmp_path / "my_factory_mod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield tmp_path
    sys.modules.pop("my_factory_mod", None)


def test_factory_in_the_current_directory_is_importable(console_script_path, capsys):
    code, err, out = _run(console_script_path, capsys, "--model", "my_factory_mod:make", "--suite",
                          _suite(console_script_path))  # fmt: skip
    assert code == 0, err
    summary = json.loads(next((console_script_path / "out").iterdir()).joinpath("summary.json").read_text())
    assert summary["model"] == "my_factory_mod:make" and summary["n_samples"] == 8
    assert summary["normalization"] == {
        "mean": None,
        "std": None,
        "source": "none added (the model gets [0, 1] input)",
    }


def test_a_module_that_is_nowhere_or_breaks_fails_clearly(console_script_path):
    with pytest.raises(ConfigError, match="cannot import module 'not_here_mod'"):
        load_model("not_here_mod:make")
    (console_script_path / "broken_mod.py").write_text("raise RuntimeError('needs a GPU')\n")
    with pytest.raises(ConfigError, match="importing module 'broken_mod' raised RuntimeError: needs a GPU"):
        load_model("broken_mod:make")


def test_a_misspelt_architecture_suggests_the_architecture():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        load_model("resnet81")
    with pytest.raises(
        ConfigError, match="timm has no architecture 'convnext_tinyy' .did you mean 'convnext_tiny'"
    ):
        load_model("timm:convnext_tinyy")


# ----------------------------------------------------------------------------- --normalize
def test_parse_normalize():
    assert parse_normalize(None) is None
    assert parse_normalize("none") == "none"
    assert parse_normalize("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert parse_normalize("0.5,0.25") == ((0.5,), (0.25,))
    assert parse_normalize("0.1,0.2,0.3,1,2,3") == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert parse_normalize(((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))) == ((0.5,) * 3, (0.2,) * 3)
    for bad in ("imagenett", "0.5", "0.5,0", "1,2,3", "a,b", "0.5,nan"):
        with pytest.raises(ConfigError, match="--normalize"):
            parse_normalize(bad)


def test_normalize_wraps_a_factory_model_and_is_recorded():
    x = torch.rand(2, 3, 32, 32)
    model, info = load_model("tests.test_model_loading:linear", normalize="0.5,0.25")
    assert isinstance(model, Normalized)
    assert torch.allclose(model(x), linear()((x - 0.5) / 0.25), atol=1e-5)
    assert info["normalization"] == {"mean": [0.5], "std": [0.25], "source": "--normalize"}
    plain, info = load_model("tests.test_model_loading:linear")
    assert not isinstance(plain, Normalized) and info["normalization"]["mean"] is None


def test_architecture_default_normalization_comes_from_its_metadata(tmp_path):
    import timm
    import torchvision

    tv = torchvision.models.resnet18(num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    model, info = load_model("torchvision:resnet18", weights=tmp_path / "tv.pt", num_classes=10)
    assert info["normalization"]["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert model.mean.tolist() == pytest.approx(list(IMAGENET_MEAN))
    bare, info = load_model(
        "torchvision:resnet18", weights=tmp_path / "tv.pt", num_classes=10, normalize="none"
    )
    assert isinstance(bare, torchvision.models.ResNet) and info["normalization"]["mean"] is None
    # timm's test_convnext was trained with mean 0.5, not ImageNet's: the default follows its pretrained_cfg
    net = timm.create_model("test_convnext", num_classes=10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "c.safetensors"))
    model, info = load_model("timm:test_convnext", weights=tmp_path / "c.safetensors", num_classes=10)
    assert (
        info["normalization"]["mean"] == [0.5, 0.5, 0.5]
        and "pretrained_cfg" in info["normalization"]["source"]
    )
    model, info = load_model("timm:test_convnext", weights=tmp_path / "c.safetensors", num_classes=10,
                             normalize="imagenet")  # fmt: skip
    assert (
        model.mean.tolist() == pytest.approx(list(IMAGENET_MEAN))
        and info["normalization"]["source"] == "--normalize"
    )


def test_normalize_is_part_of_the_run_identity(tmp_path):
    a = RunConfig(model="tests.test_model_loading:linear", suite=_suite(tmp_path))
    b = a.replace(normalize="imagenet")
    assert "normalize" not in a.identity()  # an older run's stored identity still matches
    assert b.identity()["normalize"] == [list(IMAGENET_MEAN), list(IMAGENET_STD)]
    assert a.replace(normalize="none").identity()["normalize"] == "none"


# ----------------------------------------------------------------------------- checkpoint layouts
@pytest.mark.parametrize(
    "wrap,key",
    [
        (lambda sd: {"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, "model"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "state_dict"),
        (lambda sd: {"model_state_dict": sd, "epoch": 3}, "model_state_dict"),
        (lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}, "state_dict"),  # Lightning
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, None),  # torch.compile
    ],
)
def test_common_checkpoint_layouts_are_unwrapped(tmp_path, caplog, wrap, key):
    ref = linear()
    torch.save(wrap(ref.state_dict()), tmp_path / "ckpt.pt")
    target = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with caplog.at_level(logging.INFO, logger="robustkit"):
        load_into(target, tmp_path / "ckpt.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(target.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    if key is not None:
        assert f"under the checkpoint's '{key}' key" in caplog.text


def test_keys_gain_the_prefix_of_a_wrapping_model():
    """RobustBench's ImageNet layout: a checkpoint of the bare network into ``Sequential(normalize, model)``."""
    inner = nn.Linear(4, 2)
    wrapped = nn.Sequential()
    wrapped.add_module("model", nn.Linear(4, 2))
    state = {f"module.{k}": v for k, v in inner.state_dict().items()}
    aligned, note = align_keys(state, set(wrapped.state_dict()))
    assert set(aligned) == {"model.weight", "model.bias"} and "added the prefix 'model.'" in note


def test_head_mismatch_is_one_line_with_the_fix(tmp_path):
    torch.save({"state_dict": linear(1000).state_dict()}, tmp_path / "imagenet_head.pt")
    with pytest.raises(ModelError) as info:
        load_into(linear(10), tmp_path / "imagenet_head.pt")
    text = str(info.value)
    assert "1000-class head (1)" in text and "10 classes" in text and "fine-tune a 10-class head" in text
    assert "\n" not in text
    with pytest.raises(ModelError, match="1000-class head"):  # a ValueError: the CLI exits 2
        load_model("tests.test_model_loading:linear", weights=tmp_path / "imagenet_head.pt")


def test_a_whole_pickled_model_is_refused_with_how_to_save_weights(tmp_path):
    torch.save(linear(), tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state(tmp_path / "whole.pt")
    assert "whole pickled model" in str(info.value) and ".state_dict()" in str(info.value)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.container.Sequential"):
        load_model("tests.test_model_loading:linear", weights=tmp_path / "whole.pt")


def test_a_checkpoint_without_known_keys_names_its_keys(tmp_path):
    torch.save({"weights_of_mine": linear().state_dict(), "epoch": 1}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="'weights_of_mine', 'epoch'"):
        load_state(tmp_path / "odd.pt")


# ----------------------------------------------------------------------------- model errors (issue 18)
class Int64Logits(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10, dtype=torch.int64)


class OutputElsewhere(nn.Module):
    """Stands for a model that moves its output to CUDA: on a CPU it returns it on another device."""

    def __init__(self):
        super().__init__()
        self.fc = linear()

    def forward(self, x):
        return self.fc(x).to("meta")


class MovesItself(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = linear()

    def forward(self, x):
        out = self.fc(x)
        self.fc.to(torch.device("meta"))
        return out


class CallsCuda(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = linear()

    def forward(self, x):
        if torch.cuda.is_available():
            return self.fc.cuda()(x.cuda())
        raise RuntimeError("Found no NVIDIA driver on your system")  # what .cuda() raises without one


def int64_logits():
    return Int64Logits()


def output_elsewhere():
    return OutputElsewhere()


def moves_itself():
    return MovesItself()


def calls_cuda():
    return CallsCuda()


def raises():
    raise RuntimeError("weights server down")


def on_meta():
    with torch.device("meta"):
        return linear()


def not_a_model():
    return "resnet"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("tests.test_model_loading:int64_logits", "returned int64 logits. Expected floating-point"),
        ("tests.test_model_loading:raises", "the factory raised RuntimeError: weights server down"),
        ("tests.test_model_loading:on_meta", "on the meta device"),
        ("tests.test_model_loading:output_elsewhere", "returned its logits on meta for input on cpu"),
        ("tests.test_model_loading:moves_itself", "moved its own weights during forward"),
        ("tests.test_model_loading:calls_cuda", "cpu"),
        ("tests.test_model_loading:not_a_model", "returned str"),
        ("os:sep", "not a function"),
    ],
)
def test_model_errors_name_the_model(tmp_path, spec, message):
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    with pytest.raises(ModelError) as info:  # a ValueError: the CLI exits 2
        evaluate(model=spec, data=(x, y), num_classes=10, suite=_suite(tmp_path), out=tmp_path / "out",
                 progress=False)  # fmt: skip
    assert message in str(info.value) and spec in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_factory_that_needs_arguments_exits_2(tmp_path, capsys):
    code, err, _ = _run(tmp_path, capsys, "--model", "os:system", "--suite", _suite(tmp_path))
    assert code == 2 and "os:system" in err and "needs argument(s) command" in err
    assert "internal error" not in err and "Traceback" not in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- clean accuracy at chance
def test_chance_finding_threshold():
    assert chance_finding(0.1, 10, 50) is not None  # at chance
    assert chance_finding(0.0, 10, 50)[1] == "warn"
    assert chance_finding(0.11, 10, 50) is None
    assert chance_finding(0.4, 2, 50) is not None and chance_finding(0.6, 2, 50) is None


class Constant(nn.Module):
    def __init__(self, label: int):
        super().__init__()
        self.label = label
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = -torch.ones(x.shape[0], 4) + self.w * x.mean()
        logits[:, self.label] = 1.0
        return logits


def test_clean_accuracy_at_chance_is_warned_and_recorded(tmp_path, caplog):
    x, y = torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 3] * 2)
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        chance = evaluate(model=Constant(0), data=(x, y), num_classes=4, suite=_suite(tmp_path),
                          out=tmp_path / "a", progress=False, report=False)  # fmt: skip
    found = {f["name"]: f for f in chance.summary["findings"]}
    assert chance.summary["clean_accuracy"] == 0.25
    assert found["clean-accuracy-at-chance"]["status"] == "warn"
    assert "at or below chance (1/4 = 25.0%)" in caplog.text
    caplog.clear()
    y_easy = torch.zeros(8, dtype=torch.long)  # every prediction right
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        fine = evaluate(model=Constant(0), data=(x, y_easy), num_classes=4, suite=_suite(tmp_path),
                        out=tmp_path / "b", progress=False, report=False)  # fmt: skip
    assert "clean-accuracy-at-chance" not in {f["name"] for f in fine.summary["findings"]}
    assert "chance" not in caplog.text


def test_pretrained_is_refused_for_a_factory():
    with pytest.raises(ConfigError, match="--pretrained applies to torchvision"):
        load_model("tests.test_model_loading:linear", pretrained=True)
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None
