"""Defense checkpoints: round trip, refusal of code-carrying pickles, resume, loading, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustkit.cli import main
from robustkit.defenses.base import (
    DEFENSES,
    Capabilities,
    Defense,
    DefenseRecipe,
    register_defense,
    split_spec,
)
from robustkit.defenses.baselines import madry_loss
from robustkit.defenses.loading import load_defense, train_defense
from robustkit.errors import ConfigError, UnsafeCheckpointError
from robustkit.training.checkpoints import optimizer_tensors, read_checkpoint, restore_optimizer
from robustkit.training.settings import TrainSettings

torch.set_num_threads(1)

TINY = {"train_size": 64, "batch_size": 32, "device": "cpu", "progress": False, "test_size": 32}


class Interrupt:
    at_step: int | None = None
    calls = 0


def interruptible_loss(model, x, y, ctx):
    Interrupt.calls += 1
    if Interrupt.at_step is not None and Interrupt.calls > Interrupt.at_step:
        raise KeyboardInterrupt
    return madry_loss(model, x, y, ctx)


class Interruptible(DefenseRecipe):
    """A user's backend: the default BN ResNet with its own loss method."""

    def loss(self, model, x, y, ctx):
        return interruptible_loss(model, x, y, ctx)


if "test-interruptible" not in DEFENSES:
    register_defense(Interruptible(
        name="test-interruptible", description="PGD-AT with 2 attack steps that can be interrupted (tests only)",
        settings=TrainSettings(epochs=2, steps=2, step_size=4 / 255, width=4),
    ))  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("standard")
    info = train_defense("standard", "shapes", out_dir=out, epochs=1, **TINY)
    return out, info


def test_checkpoint_round_trip(trained):
    out, info = trained
    assert info["sha256"] and (out / "model.json").is_file() and (out / "checkpoint.safetensors").is_file()
    assert json.loads((out / "model.json").read_text())["cost"]["passes_per_step"]["total"] == pytest.approx(
        2.0
    )
    defense = load_defense(f"standard:{out / 'model.safetensors'}", dataset="shapes")
    assert isinstance(defense, Defense) and defense.capabilities == Capabilities()
    state = load_file(str(out / "model.safetensors"))
    for k, v in defense.model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    x = torch.rand(4, 3, 32, 32)
    again = load_defense(f"standard:{out / 'model.safetensors'}", dataset="shapes")
    with torch.no_grad():
        torch.testing.assert_close(defense.model(x), again.model(x))
    # an inner-network state dict saved with torch.save (weights only) loads as well
    pt = out / "inner.pt"
    torch.save(defense.model.model.state_dict(), pt)
    from_pt = load_defense(f"standard:{pt}", dataset="shapes")
    with torch.no_grad():
        torch.testing.assert_close(from_pt.model(x), defense.model(x))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_checkpoint_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"stem.0.weight": torch.zeros(1), "payload": _Payload(str(marker))}, evil)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_defense(f"standard:{evil}", dataset="shapes")
    assert not marker.exists()


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    Interrupt.at_step, Interrupt.calls = None, 0
    straight = train_defense("test-interruptible", "shapes", out_dir=tmp_path / "a", **TINY)
    Interrupt.at_step, Interrupt.calls = 3, 0  # dies in epoch 2 (2 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train_defense("test-interruptible", "shapes", out_dir=tmp_path / "b", **TINY)
    _, state = read_checkpoint(tmp_path / "b")
    assert (
        state["epochs_done"] == 1
        and state["step"] == 2
        and not (tmp_path / "b" / "model.safetensors").exists()
    )
    with pytest.raises(ConfigError, match="another training run"):
        train_defense("test-interruptible", "shapes", out_dir=tmp_path / "b", **{**TINY, "batch_size": 16})
    Interrupt.at_step = None
    resumed = train_defense("test-interruptible", "shapes", out_dir=tmp_path / "b", **TINY)
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["cost"]["steps"] == straight["cost"]["steps"] == 4
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    # already trained: returns at once with the stored info
    assert (
        train_defense("test-interruptible", "shapes", out_dir=tmp_path / "b", **TINY)["sha256"]
        == resumed["sha256"]
    )


def test_optimizer_state_round_trip():
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    json.dumps(meta)  # the non-tensor part is JSON
    other = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    restore_optimizer(other, tensors, json.loads(json.dumps(meta)))
    assert other.param_groups[0]["lr"] == 0.1
    for p in net.parameters():
        torch.testing.assert_close(other.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_user_objects_names_and_errors():
    class Mine(nn.Module):
        capabilities = Capabilities(stochastic=True)

        def forward(self, x):
            return x.flatten(1)[:, :10]

    d = load_defense(Mine(), dataset="shapes")  # a user's module keeps the mode it was given
    assert d.name == "Mine" and d.capabilities.stochastic and d.model.training
    assert not load_defense(Mine().eval(), dataset="shapes").model.training
    assert split_spec("abnn:w/x.safetensors")[0] == "abnn" and split_spec("pgd-at") == ("pgd-at", None)
    with pytest.raises(ConfigError, match="did you mean 'standard'"):
        load_defense("standart", dataset="shapes")
    with pytest.raises(ConfigError, match="after the colon"):
        load_defense("standard:", dataset="shapes")
    with pytest.raises(ConfigError, match="module names"):
        Capabilities(non_differentiable="jpeg")
    for empty in (("",), (" ",), ("jpeg", "")):  # "" names the whole model: BPDA would silently do nothing
        with pytest.raises(ConfigError, match="module names"):
            Capabilities(non_differentiable=empty)
    with pytest.raises(ConfigError, match="True or False"):
        Capabilities(stochastic="yes")


def test_views_load_from_one_checkpoint(tmp_path):
    from robustkit.defenses.abnn import TargetOnly
    from robustkit.defenses.backbones import DataSpec
    from robustkit.models.checkpoint import save_weights

    recipe = DEFENSES.create("abnn")
    model = recipe.build(DataSpec("shapes", 10, (3, 32, 32)), recipe.settings)
    path = tmp_path / "abnn.safetensors"
    save_weights(model, path)
    view = load_defense(f"abnn-target-only:{path}", dataset="shapes")
    assert isinstance(view.model, TargetOnly) and not view.capabilities.batch_dependent  # running statistics
    assert view.info["recipe"] == "abnn-target-only"


def test_cli_train_and_list(tmp_path, capsys):
    assert main(["train", "--list"]) == 0
    assert "abnn-transfer" in capsys.readouterr().out
    assert main(["train", "--defense", "standard"]) == 2  # typed errors map to exit code 2, as for evaluate
    assert "--out" in capsys.readouterr().err
    argv = ["train", "--defense", "standard", "--data", "shapes", "--epochs", "1", "--train-size", "32"]
    argv += ["--batch-size", "16", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["defense"] == "standard" and printed["passes_per_step"] == pytest.approx(2.0)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--defense", "standard", "--epochs", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err
    assert main(["train", "--defense", "standard", "--lr", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--lr must be a positive number" in capsys.readouterr().err
