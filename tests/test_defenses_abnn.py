"""ABNN: the adaptive BN equation on hand-computed tensors, batch dependence, gradient views, training."""

from __future__ import annotations

import pytest
import torch

from robustkit.defenses.abnn import ABNN, AdaptiveBN, TargetOnly, adaptive_bn, moments
from robustkit.defenses.adaptive import Transfer
from robustkit.defenses.backbones import MEAN, STD, DataSpec, SmallResNet3d, bn_backbone, normalized
from robustkit.errors import ConfigError
from robustkit.models.resnet import SmallResNet

torch.set_num_threads(1)


def tiny_abnn(reduce: str = "batch", width_t: int = 4, width_s: int = 4, **kw) -> ABNN:
    torch.manual_seed(0)
    target = SmallResNet(num_classes=3, width=width_t)
    substitute = normalized(SmallResNet(num_classes=3, width=width_s), 3)
    net = ABNN(target, substitute, reduce=reduce, **kw)
    with torch.no_grad():  # non-trivial BN affine and running statistics everywhere
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_equation_on_hand_computed_tensors():
    # channel 0 of the target: values 1, 3 (mean 2, var 1); of the substitute: 0, 4 (mean 2, var 4).
    # z' = gamma * (2 * (z_t - 2) / 1 + 2) + beta, so z_t = 1 -> beta and z_t = 3 -> 4 gamma + beta.
    # channel 1 of the target: 0, 0, 2, 2 (mean 1, var 1); substitute: 5 everywhere (mean 5, var 0).
    z_t = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[1.0, 3.0]], [[2.0, 2.0]]]])  # (2, 2, 1, 2)
    z_s = torch.tensor([[[[0.0, 4.0]], [[5.0, 5.0]]], [[[0.0, 4.0]], [[5.0, 5.0]]]])
    gamma, beta = torch.tensor([0.5, 2.0]), torch.tensor([1.0, -1.0])
    out = adaptive_bn(z_t, z_s, gamma, beta, granularity="channel", reduce="batch", eps=0.0)
    expected = torch.tensor([[[[1.0, 3.0]], [[9.0, 9.0]]], [[[1.0, 3.0]], [[9.0, 9.0]]]])
    # channel 1: sigma_s = 0 removes the target's variation: 2 * (0 * ... + 5) - 1 = 9
    torch.testing.assert_close(out, expected)


def test_scalar_and_per_sample_statistics_by_hand():
    z_t = torch.tensor([[[[0.0, 2.0]]], [[[10.0, 30.0]]]])  # (2, 1, 1, 2): sample means 1 and 20
    z_s = torch.tensor([[[[1.0, 1.0]]], [[[-1.0, 3.0]]]])  # sample 0: mean 1 var 0; sample 1: mean 1 var 4
    one, zero = torch.ones(1), torch.zeros(1)
    per_sample = adaptive_bn(z_t, z_s, one, zero, granularity="scalar", reduce="sample", eps=0.0)
    # sample 0: 0 * (...) + 1 = 1 ; sample 1: sigma_t = 10 -> 2 * (z - 20) / 10 + 1 = -1, 3
    torch.testing.assert_close(per_sample, torch.tensor([[[[1.0, 1.0]]], [[[-1.0, 3.0]]]]))
    mean, std = moments(z_t, "scalar", "batch", eps=0.0)
    assert mean.shape == (1, 1, 1, 1) and float(mean) == pytest.approx(10.5)
    assert float(std) == pytest.approx(float(z_t.flatten().var(correction=0).sqrt()))
    m2, s2 = moments(torch.randn(4, 3, 5, 5), "channel", "sample")
    assert m2.shape == s2.shape == (4, 3, 1, 1)


def test_learned_map_starts_at_identity_affine_and_substitute_affine_is_used():
    torch.manual_seed(1)
    z_t, z_s = torch.randn(4, 3, 5, 5), torch.randn(4, 6, 3, 3)
    layer = AdaptiveBN(3, 6)  # channels differ -> scalar statistics and the learned map
    assert (layer.granularity, layer.affine) == ("scalar", "map")
    ref = adaptive_bn(z_t, z_s, torch.ones(3), torch.zeros(3), granularity="scalar", reduce="batch")
    torch.testing.assert_close(layer(z_t, z_s), ref)
    matched = AdaptiveBN(3, 3)
    assert (matched.granularity, matched.affine) == ("channel", "substitute")
    g, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, -1.0, 1.0])
    zs3 = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(matched(z_t, zs3, g, b), adaptive_bn(z_t, zs3, g, b))
    with pytest.raises(ConfigError, match="equal channel counts"):
        AdaptiveBN(3, 6, granularity="channel")
    with pytest.raises(ConfigError, match="reduce"):
        AdaptiveBN(3, 3, reduce="epoch")


def test_abnn_taps_follow_the_equation():
    net = tiny_abnn(granularity="channel", affine="substitute")
    x = torch.rand(6, 3, 16, 16)
    z = (x - MEAN) / STD
    feats = net.substitute_features(x)
    for tap, z_s in zip(("stem", "layer1", "layer2", "layer3", "layer4"), feats, strict=True):
        z = getattr(net.target, tap)(z)
        bn = {"stem": net.substitute.model.stem[1]}.get(tap) or getattr(net.substitute.model, tap)[-1].bn2
        z = adaptive_bn(z, z_s, bn.weight, bn.bias)
    expected = net.target.fc(net.target.pool(z).flatten(1))
    torch.testing.assert_close(net(x), expected)


def test_batch_statistics_make_outputs_batch_dependent():
    x = torch.rand(8, 3, 16, 16)
    other = torch.rand(8, 3, 16, 16) * 0.3
    batch = tiny_abnn("batch")
    assert batch.batch_dependent
    with torch.no_grad():
        a = batch(x)[:4]
        b = batch(torch.cat([x[:4], other[4:]]))[:4]
        single = torch.cat([batch(x[i : i + 1]) for i in range(4)])
    assert (a - b).abs().max() > 1e-3  # same samples, other batch-mates: other logits
    assert (a - single).abs().max() > 1e-3
    per_sample = tiny_abnn("sample")
    assert not per_sample.batch_dependent
    with torch.no_grad():
        full = per_sample(x)
        ones = torch.cat([per_sample(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(full, ones, atol=1e-5, rtol=1e-5)  # batch of N == N batches of 1


def test_gradient_views():
    net = tiny_abnn()
    x = torch.rand(4, 3, 16, 16)

    w = torch.randn(4, 3)

    def grad(model):  # a linear objective, so gradients compare Jacobians only
        xr = x.clone().requires_grad_(True)
        (model(xr) * w).sum().backward()
        return xr.grad

    white, target_only = grad(net), grad(TargetOnly(net))
    assert (white - target_only).abs().max() > 1e-6  # the substitute path carries gradient
    net.substitute.requires_grad_(False)
    torch.testing.assert_close(TargetOnly(net)(x), net(x))  # same values, only gradients differ
    torch.manual_seed(3)
    source = normalized(SmallResNet(num_classes=3, width=4), 3).eval()
    transfer = Transfer(net, source)
    torch.testing.assert_close(transfer(x), net(x))
    torch.testing.assert_close(grad(transfer), grad(source))


def test_substitute_stays_frozen_and_in_eval_mode():
    net = tiny_abnn().train()
    assert not net.substitute.training and net.target.training
    assert not any(p.requires_grad for p in net.substitute.parameters())


def test_video_abnn_on_5d_clips():
    torch.manual_seed(0)
    spec = DataSpec("clips", 4, (3, 4, 16, 16))
    target = bn_backbone(spec, width=4)
    assert isinstance(target, SmallResNet3d)
    net = ABNN(target, normalized(SmallResNet3d(4, width=4), 3)).eval()
    x = torch.rand(3, 3, 4, 16, 16, requires_grad=True)
    out = net(x)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_abnn_trains_on_clean_data_with_the_substitute_frozen(tmp_path):
    from robustkit.defenses.abnn import build_abnn
    from robustkit.defenses.loading import train_defense
    from robustkit.training.settings import TrainSettings

    spec = DataSpec("shapes", 10, (3, 32, 32))
    fresh = build_abnn(spec, TrainSettings())
    torch.manual_seed(5)
    for p in fresh.substitute.parameters():
        p.data.normal_(0, 0.1)
    sub_path = tmp_path / "substitute.safetensors"
    from robustkit.models.checkpoint import save_weights

    save_weights(fresh.substitute.model, sub_path)
    info = train_defense(
        "abnn",
        "shapes",
        out_dir=tmp_path / "abnn",
        epochs=1,
        train_size=64,
        batch_size=32,
        device="cpu",
        progress=False,
        init=sub_path,
        test_size=64,
    )
    assert info["prepared"]["substitute"] == str(sub_path)
    cost = info["cost"]["passes_by_network"]
    assert cost["target"] == {"forward": 1.0, "backward": 1.0}  # T forward and backward
    assert cost["substitute"] == {"forward": 1.0, "backward": 0.0}  # S forward only: 3 passes per step
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "abnn" / "model.safetensors"))
    for k, v in fresh.substitute.model.state_dict().items():
        torch.testing.assert_close(trained[f"substitute.model.{k}"], v)
