"""``robustkit.defenses.adaptive.adapt``: capabilities detected from the model, the surrogate head, the
views and the placement of EOT; ``Transfer`` and ``AmongClean``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.defenses.adaptive import AmongClean, Transfer, adapt, batch_statistics, random_modules
from robustkit.defenses.base import Capabilities, as_defense
from robustkit.errors import ConfigError

from .conftest import TinyNet


class ClampedHead(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, 1).clamp(min=-5.0)


class Quantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


def test_train_mode_batchnorm_and_dropout_are_detected_and_said():
    net = _net()
    assert batch_statistics(net) == [] and random_modules(net) == []
    a = adapt(as_defense(net))
    assert not a.capabilities.batch_dependent and [v.name for v in a.views] == ["white-box"]
    net.train()  # the common way of writing a test-time-BN model
    a = adapt(as_defense(net))
    assert batch_statistics(net) == ["features.1"]
    assert a.capabilities.batch_dependent and not a.capabilities.stochastic
    assert [v.name for v in a.views] == ["whole-batch", "one-at-a-time", "among-clean"]
    assert any("BatchNorm" in d for d in a.detected) and any("detected" in h for h in a.record["how_honored"])
    assert a.record["declared"]["batch_dependent"] is False  # what the user said is kept apart
    assert net.training  # adapt never changes the user's mode
    dropped = nn.Sequential(nn.Dropout(0.3), _net()).train()
    dropped[1].eval()
    a = adapt(as_defense(dropped))
    assert a.capabilities.stochastic and not a.capabilities.batch_dependent and a.draws >= 10


def test_declared_head_gets_a_surrogate_and_preprocessing_keeps_bpda():
    model = nn.Sequential()
    model.add_module("pre", Quantize())
    model.add_module("net", _net())
    model.add_module("head", ClampedHead())
    caps = Capabilities(non_differentiable=("pre", "head"))
    x = torch.rand(4, 3, 16, 16)
    a = adapt(as_defense(model, capabilities=caps), probe=x)
    with torch.no_grad():
        assert torch.equal(a.model(x), model(x))  # deployed forward unchanged, bit for bit
        z = model.net(model.pre(x))
        assert torch.allclose(a.attack_model(x), z)  # the surrogate sees the pre-saturation logits
    assert isinstance(model.head, ClampedHead)  # the user's model is untouched
    xg = x.clone().requires_grad_(True)
    a.attack_model(xg)[:, 0].sum().backward()
    assert xg.grad.abs().sum() > 0  # BPDA through the quantizer
    assert any("pre-saturation" not in h and "logits before it" in h for h in a.record["how_honored"])
    # without a probe nothing is known about the head: both keep BPDA, the attack model is the deployed one
    b = adapt(as_defense(model, capabilities=caps))
    assert b.attack_model is b.model


def test_unknown_module_names_list_the_real_ones():
    with pytest.raises(ConfigError, match="features"):
        adapt(as_defense(_net(), capabilities=Capabilities(non_differentiable=("preprocess",))))
    with pytest.raises(ConfigError, match="draws"):
        adapt(as_defense(_net()), draws=3)


def test_eot_goes_inside_the_gradient_attacks_only():
    a = adapt(as_defense(_net(), capabilities=Capabilities(stochastic=True)), eot_samples=7)
    aa = a.adapt_attack(create_attack("autoattack", eps=8 / 255))
    assert aa.version == "rand" and [s.eot_samples for _, s in aa.stages()] == [7, 7]
    assert a.adapt_attack(create_attack("apgd-ce", eps=8 / 255)).eot_samples == 7
    square = create_attack("square", eps=8 / 255, queries=10)
    assert a.adapt_attack(square) is square  # no per-draw repetition of Square or FAB
    plain = adapt(as_defense(_net()))
    apgd = create_attack("apgd-ce", eps=8 / 255)
    assert plain.adapt_attack(apgd) is apgd


def test_transfer_takes_the_value_of_the_defense_and_the_gradient_of_the_source():
    defended, source = _net(), TinyNet().eval()
    t = Transfer(defended, source)
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = t(x)
    assert torch.allclose(out, defended(x))
    out[:, 1].sum().backward()
    g_t = x.grad.clone()
    x.grad = None
    source(x)[:, 1].sum().backward()
    assert torch.allclose(g_t, x.grad)
    a = adapt(as_defense(defended, transfer_from={"src": source}))
    assert [v.name for v in a.views] == ["white-box", "transfer:src"]
    assert isinstance(a.views[1].model(defended), Transfer)


def test_among_clean_evaluates_each_row_with_the_clean_mates():
    net = _net().train()
    mates = torch.rand(5, 3, 16, 16)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = AmongClean(net, mates)(x)
        for i in range(2):
            assert torch.allclose(out[i], net(torch.cat([x[i : i + 1], mates]))[0], atol=1e-6)
        assert not torch.allclose(out, net(x))  # batch statistics differ from attacking the two together


def test_a_model_that_cannot_run_on_one_sample_has_no_one_at_a_time_view():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)).train()
    before = net[2].running_mean.clone()
    a = adapt(as_defense(net), probe=torch.rand(4, 3, 16, 16))
    assert [v.name for v in a.views] == ["whole-batch", "among-clean"]
    assert any("single sample" in h for h in a.record["how_honored"])
    assert torch.equal(net[2].running_mean, before) and net.training  # probing left the model as it was
