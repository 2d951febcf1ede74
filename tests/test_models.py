"""Model wrappers, safe checkpoint loading and --model specs."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustkit.errors import ConfigError, ModelError, UnsafeCheckpointError
from robustkit.models.checkpoint import load_state
from robustkit.models.loading import load_model
from robustkit.models.normalized import Normalized


def test_normalized_broadcasts_on_4d_and_5d():
    n = Normalized(nn.Identity(), (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x4 = torch.rand(2, 3, 4, 4)
    x5 = torch.rand(2, 3, 5, 4, 4)
    for x in (x4, x5):
        out = n(x)
        assert torch.allclose(out[:, 0], (x[:, 0] - 0.5) / 0.5)
        assert torch.allclose(out[:, 2], x[:, 2] / 2.0)


def factory():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def test_factory_spec_and_weights(tmp_path):
    model, info = load_model("tests.test_models:factory")
    assert info["kind"] == "factory" and model(torch.rand(1, 3, 8, 8)).shape == (1, 4)
    state = {k: torch.zeros_like(v) for k, v in factory().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    model, _ = load_model("tests.test_models:factory", weights=tmp_path / "w.safetensors")
    assert torch.count_nonzero(model(torch.rand(1, 3, 8, 8))) == 0


def test_torchvision_architecture_with_state_dict(tmp_path):
    import torchvision

    ref = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    torch.save(ref.state_dict(), tmp_path / "r18.pt")
    model, info = load_model("resnet18", weights=tmp_path / "r18.pt", num_classes=3)
    assert isinstance(model, Normalized) and info["kind"] == "architecture"
    x = torch.rand(2, 3, 32, 32)
    ref.eval()
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    assert torch.allclose(model(x), ref((x - mean) / std), atol=1e-5)


def test_timm_architecture(tmp_path):
    import timm

    ref = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "t.safetensors"))
    model, info = load_model("timm:resnet10t", weights=tmp_path / "t.safetensors", num_classes=5)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 5)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_unsafe_and_broken_checkpoints(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_state(evil)
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(10)}, str(good))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:20])
    with pytest.raises(ModelError, match="truncated"):
        load_state(trunc)
    with pytest.raises(ModelError, match="does not fit"):
        load_model("tests.test_models:factory", weights=good)


def test_unknown_specs():
    with pytest.raises(ConfigError, match="did you mean 'shapes-resnet'"):
        load_model("shapes-resnt")
    with pytest.raises(ConfigError, match="without weights"):
        load_model("resnet18")
    with pytest.raises(ConfigError, match="cannot import"):
        load_model("no_such_module_xyz:make")


def test_zoo_model_reaches_90_percent(shapes_model):
    from robustkit.builtin.shapes import shapes
    from robustkit.training.data import accuracy

    assert accuracy(shapes_model, shapes("test"), torch.device("cpu")) >= 0.9
