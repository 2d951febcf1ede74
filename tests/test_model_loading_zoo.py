"""Models by name through the real loaders, offline: torchvision's and timm's pretrained weights from their
caches (torch.hub's, the Hugging Face hub's), RobustBench's zoo from its checkpoint layout; each with
small checkpoints placed where the loader looks, and a clear error naming the file when it is missing. And
the RobustBench model card of a run."""

from __future__ import annotations

import importlib.util
import json
import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from robustkit.api import evaluate
from robustkit.cli import main
from robustkit.errors import ConfigError, ModelError
from robustkit.models.loading import load_model
from robustkit.report.modelcard import FIELDS, format_eps, model_card, write_model_card


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def offline(monkeypatch):
    """No network, whatever the machine has: torch.hub's downloader and the Hugging Face hub fail."""
    import huggingface_hub.constants

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_pretrained_through_torch_hub_cache(tmp_path, monkeypatch, offline):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ModelError) as info:
        load_model("torchvision:resnet18", pretrained=True)
    text = str(info.value)
    assert (
        f"Expected the file {expected}" in text
        and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in text
    )
    assert not expected.exists()

    torch.manual_seed(0)
    ref = torchvision.models.resnet18()  # random weights saved as torch.hub caches the real ones
    expected.parent.mkdir(parents=True, exist_ok=True)  # torch.hub made the folder when it tried to download
    torch.save(ref.state_dict(), expected)
    model, info = load_model("torchvision:resnet18", pretrained=True, num_classes=1000)
    assert _same(model.model, ref) and not model.training
    assert info["weights"] == str(expected) and info["pretrained"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert info["normalization"]["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert info["input_size"] == 224
    with pytest.raises(ModelError, match="1000-class head but the data has 10 classes"):
        load_model("torchvision:resnet18", pretrained=True, num_classes=10)
    with pytest.raises(ConfigError, match="has no weights 'IMAGENET1K_V9'; it has IMAGENET1K_V1"):
        load_model("torchvision:resnet18", pretrained="IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="either --pretrained or --weights"):
        load_model("torchvision:resnet18", pretrained=True, weights=expected)


def test_a_corrupt_cached_torchvision_file_is_named(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(ModelError, match=f"the cached weights {cached} could not be read"):
        load_model("torchvision:resnet18", pretrained=True)


# ----------------------------------------------------------------------------- timm
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """The Hugging Face hub cache in a temporary folder (what HF_HOME=<tmp> gives a fresh process)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_timm_pretrained_through_the_hugging_face_cache(hf_cache, offline):
    import timm

    folder = hf_cache / "models--timm--test_convnext.r160_in1k"
    with pytest.raises(ModelError) as info:
        load_model("timm:test_convnext", pretrained=True)
    text = str(info.value)
    assert f"{folder}/snapshots/<commit>/model.safetensors" in text and "HF_HOME" in text
    assert "https://huggingface.co/timm/test_convnext.r160_in1k/resolve/main/model.safetensors" in text

    torch.manual_seed(0)
    ref = timm.create_model("test_convnext")
    (folder / "snapshots" / "0f1e2d3c").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0f1e2d3c")
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()},
        str(folder / "snapshots/0f1e2d3c/model.safetensors"),
    )
    model, info = load_model("timm:test_convnext", pretrained=True)
    assert _same(model.model, ref) and not model.training
    assert info["pretrained"] == "test_convnext.r160_in1k" and info["weights"].startswith(str(folder))
    # this network was trained with mean 0.5: the default normalization is its pretrained_cfg's
    assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3,
                                     "source": "timm pretrained_cfg of test_convnext.r160_in1k"}  # fmt: skip
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()((x - 0.5) / 0.5), atol=1e-5)
    bare, info = load_model("timm:test_convnext", pretrained="r160_in1k", normalize="none")
    assert isinstance(bare, type(ref)) and info["normalization"]["mean"] is None


# ----------------------------------------------------------------------------- RobustBench
RB = "robustbench:cifar10/Linf/Sehwag2021Proxy_R18"
needs_robustbench = pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None, reason="pip install robustbench (robustkit[robustbench])"
)


@pytest.fixture
def robustbench_dir(tmp_path, monkeypatch):
    import robustkit.models.robustbench as rb

    def no_network(gdrive_id, path):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(rb, "download", no_network)
    monkeypatch.setenv(rb.DIR_VARIABLE, str(tmp_path / "models"))
    return tmp_path / "models"


@needs_robustbench
def test_robustbench_zoo_model_from_its_checkpoint_layout(tmp_path, robustbench_dir):
    from robustkit.models.robustbench import zoo

    expected = robustbench_dir / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    with pytest.raises(ModelError) as info:
        load_model(RB)
    assert f"Expected the file {expected}" in str(info.value) and "drive.google.com" in str(info.value)

    models, datasets, threats = zoo()
    torch.manual_seed(0)
    ref = models[datasets("cifar10")][threats("Linf")]["Sehwag2021Proxy_R18"]["model"]()
    expected.parent.mkdir(parents=True)
    # RobustBench's layout for many entries: the weights under 'state_dict', saved from DataParallel
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 200}, expected
    )
    model, info = load_model(RB, num_classes=10)
    assert _same(model, ref) and not model.training
    assert info["robustbench"] == {
        "dataset": "cifar10",
        "threat_model": "Linf",
        "name": "Sehwag2021Proxy_R18",
    }
    assert info["normalization"]["mean"] is None and info["weights"] == str(expected)

    with pytest.raises(ModelError, match="10 classes but the data has 100"):
        load_model(RB, num_classes=100)
    with pytest.raises(ConfigError, match="did you mean 'Sehwag2021Proxy_R18'"):
        load_model("robustbench:cifar10/Linf/Sehwag2021Proxy_R81")
    with pytest.raises(ConfigError, match="expected robustbench:<dataset>/<threat>/<name>"):
        load_model("robustbench:cifar10/Sehwag2021Proxy_R18")


@needs_robustbench
@pytest.mark.slow
def test_robustbench_model_is_evaluated(tmp_path, robustbench_dir):
    """The whole run on a RobustBench model (ResNet-18: the sanity checks' attacks take a while on a CPU)."""
    from robustkit.models.robustbench import zoo

    models, datasets, threats = zoo()
    path = robustbench_dir / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    path.parent.mkdir(parents=True)
    torch.save(
        models[datasets("cifar10")][threats("Linf")]["Sehwag2021Proxy_R18"]["model"]().state_dict(), path
    )
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    suite = tmp_path / "s.yaml"
    suite.write_text("attacks: [{attack: fgsm, eps: 1/255}]")
    result = evaluate(model=RB, data=(x, y), num_classes=10, suite=str(suite), out=tmp_path / "out",
                      progress=False, report=False)  # fmt: skip
    assert result.summary["n_samples"] == 4 and result.summary["model"] == RB
    assert result.summary["normalization"]["source"].startswith("none added (RobustBench")


# ----------------------------------------------------------------------------- model card
def test_model_card_fields():
    summary = {
        "model": "mine", "data": "cifar10", "n_samples": 100, "clean_accuracy": 0.9123, "complete": True,
        "attacks": [
            {"name": "autoattack-linf", "attack": "autoattack", "norm": "Linf", "eps": 8 / 255, "robust_accuracy": 0.5},
            {"name": "autoattack-linf [one]", "attack": "autoattack", "norm": "Linf", "eps": 8 / 255,
             "robust_accuracy": 0.4567, "view": "one"},
            {"name": "pgd", "attack": "pgd", "norm": "Linf", "eps": 8 / 255, "robust_accuracy": 0.1},
        ],
        "findings": [{"name": "gradient-health", "status": "pass"}],
    }  # fmt: skip
    card = model_card(summary, name="A paper", architecture="WideResNet-28-10")
    assert list(card)[: len(FIELDS)] == list(FIELDS) and card["threat_model"] == "Linf"
    assert card["clean_acc"] == "91.23" and card["autoattack_acc"] == "45.67"  # the worst view, not PGD's
    assert card["eps"] == "8/255" and card["dataset"] == "cifar10" and card["unreliable"] is False
    assert card["name"] == "A paper" and card["architecture"] == "WideResNet-28-10"
    assert format_eps(0.5, "L2") == "0.5" and format_eps(0.03, "Linf") == "0.03"
    summary["findings"].append({"name": "unbounded-eps", "status": "fail"})
    assert model_card(summary)["unreliable"] is True
    with pytest.raises(ConfigError, match="no AutoAttack entry"):
        model_card({**summary, "attacks": summary["attacks"][2:]})
    with pytest.raises(ConfigError, match="unknown field"):
        model_card(summary, clean_accuracy="1")


def test_model_card_from_the_cli(tmp_path, capsys):
    suite = tmp_path / "aa.yaml"
    suite.write_text("attacks: [{attack: autoattack, version: [apgd-ce], steps: 2, norm: Linf, eps: 8/255}]")
    card = tmp_path / "card" / "Mine.json"
    args = ["evaluate", "--model", "tests.test_model_loading:linear", "--out", str(tmp_path / "out"), "--quiet",
            "--limit", "8", "--model-card", str(card)]  # fmt: skip
    assert main([*args, "--suite", str(suite)]) == 0, capsys.readouterr().err
    data = json.loads(card.read_text())
    summary = json.loads(next((tmp_path / "out").iterdir()).joinpath("summary.json").read_text())
    assert list(data) == list(FIELDS)
    assert data["clean_acc"] == f"{100 * summary['clean_accuracy']:.2f}" and data["eps"] == "8/255"
    assert data["autoattack_acc"] == f"{100 * summary['attacks'][0]['robust_accuracy']:.2f}"
    assert data == json.loads(
        write_model_card(next((tmp_path / "out").iterdir()), tmp_path / "again.json").read_text()
    )
    capsys.readouterr()
    assert main([*args, "--suite", "quick", "--out", str(tmp_path / "out2")]) == 2
    assert "--suite autoattack-standard" in capsys.readouterr().err and not (tmp_path / "out2").exists()
