"""ABNN: the adaptive BN equation on hand-computed tensors, running vs batch statistics, gradient views,
the substitute frozen, video clips, and the training cost."""

from __future__ import annotations

import pytest
import torch

from robustkit.defenses.abnn import ABNN, AdaptiveBN, TargetOnly, moments
from robustkit.defenses.adaptive import Transfer
from robustkit.defenses.backbones import DataSpec, SmallResNet3d, bn_backbone, normalized
from robustkit.defenses.taps import stages
from robustkit.errors import ConfigError
from robustkit.models.resnet import SmallResNet

torch.set_num_threads(1)


def tiny_abnn(width_t: int = 4, width_s: int = 4, **kw) -> ABNN:
    torch.manual_seed(0)
    target = normalized(SmallResNet(num_classes=3, width=width_t), 3)
    substitute = normalized(SmallResNet(num_classes=3, width=width_s), 3)
    net = ABNN(target, substitute, **kw)
    with torch.no_grad():  # non-trivial BN affine, running statistics and maps everywhere
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d | AdaptiveBN):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, AdaptiveBN) and m.map is not None:
                m.map.weight.normal_(0, 0.1)
    return net.eval()


def test_moments_by_hand():
    z = torch.tensor([[[[0.0, 2.0]], [[4.0, 4.0]]], [[[10.0, 30.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    mean, std = moments(z, "global", "sample", eps=0.0)
    torch.testing.assert_close(mean.flatten(), torch.tensor([2.5, 10.0]))
    torch.testing.assert_close(std.flatten() ** 2, torch.tensor([2.75, 150.0]))
    mean, std = moments(z, "channel", "batch", eps=0.0)
    assert mean.shape == (1, 2, 1, 1)
    torch.testing.assert_close(mean.flatten(), torch.tensor([10.5, 2.0]))
    m2, s2 = moments(torch.randn(4, 3, 5, 5), "channel", "sample")
    assert m2.shape == s2.shape == (4, 3, 1, 1)
    with pytest.raises(ConfigError, match="granularity"):
        moments(z, "scalar", "sample")


def test_equation_with_running_statistics_by_hand():
    # target normalized with its running statistics (mean 1, var 4 -> sigma 2), substitute statistics per
    # sample: sample 0 is 0, 4 (mean 2, var 4), sample 1 is 5, 5 (mean 5, var 0); gamma 0.5, beta 1
    layer = AdaptiveBN(1, 1, granularity="global", affine="substitute").eval()
    layer.eps = 0.0
    layer.running_mean.fill_(1.0)
    layer.running_var.fill_(4.0)
    z_t = torch.tensor([[[[1.0, 5.0]]], [[[3.0, -1.0]]]])
    z_s = torch.tensor([[[[0.0, 4.0]]], [[[5.0, 5.0]]]])
    out = layer(z_t, z_s, torch.tensor([0.5]), torch.tensor([1.0]))
    # sample 0: 0.5 * (2 * (z - 1) / 2 + 2) + 1 -> z = 1: 2, z = 5: 4 ; sample 1: 0.5 * (0 + 5) + 1 = 3.5
    torch.testing.assert_close(out, torch.tensor([[[[2.0, 4.0]]], [[[3.5, 3.5]]]]))
    batch = AdaptiveBN(1, 1, granularity="global", affine="substitute", stats="batch").eval()
    batch.eps = 1e-12  # target mean 2, var 5; substitute pooled over the batch: mean 3.5, var 4.25
    got = batch(z_t, z_s, torch.tensor([1.0]), torch.tensor([0.0]))
    torch.testing.assert_close(got, (4.25**0.5) * (z_t - 2.0) / (5.0**0.5) + 3.5, atol=1e-5, rtol=1e-5)


def test_training_uses_batch_statistics_and_updates_the_running_ones():
    layer = AdaptiveBN(2, 2).train()
    z_t, z_s = torch.randn(8, 2, 3, 3) * 3 + 1, torch.randn(8, 2, 3, 3)
    out = layer(z_t, z_s)  # map at identity: gamma 1, beta 0, substitute statistics pooled over the batch
    mu_s, sd_s = moments(z_s, "global", "batch")
    mu_t, sd_t = moments(z_t, "channel", "batch")
    torch.testing.assert_close(out, sd_s * (z_t - mu_t) / sd_t + mu_s, atol=1e-5, rtol=1e-4)
    assert (
        layer.num_batches_tracked == 1 and (layer.running_mean - 0.1 * z_t.mean((0, 2, 3))).abs().max() < 1e-5
    )


def test_learned_map_starts_at_identity_affine_and_substitute_affine_is_used():
    torch.manual_seed(1)
    z_t, z_s = torch.randn(4, 3, 5, 5), torch.randn(4, 6, 3, 3)
    layer = AdaptiveBN(3, 6).eval()  # global statistics, learned map: any channel counts
    mu_s, sd_s = moments(z_s, "global", "sample")
    torch.testing.assert_close(layer(z_t, z_s), sd_s * z_t / (1 + 1e-5) ** 0.5 + mu_s)
    matched = AdaptiveBN(3, 3, granularity="channel", affine="substitute").eval()
    g, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, -1.0, 1.0])
    zs3 = torch.randn(4, 3, 2, 2)
    mu3, sd3 = moments(zs3, "channel", "sample")
    expected = g.view(1, 3, 1, 1) * (sd3 * z_t / (1 + 1e-5) ** 0.5 + mu3) + b.view(1, 3, 1, 1)
    torch.testing.assert_close(matched(z_t, zs3, g, b), expected)
    with pytest.raises(ConfigError, match="equal channel counts"):
        AdaptiveBN(3, 6, granularity="channel")
    with pytest.raises(ConfigError, match="stats"):
        AdaptiveBN(3, 3, stats="epoch")


def test_abnn_taps_follow_the_equation():
    net = tiny_abnn(granularity="channel", affine="substitute")
    assert net.taps == ("stem", "layer1", "layer2", "layer3")  # no tap after the last stage
    x = torch.rand(6, 3, 16, 16)
    t, s = stages(net.target), stages(net.substitute)
    feats = net.substitute_features(x)
    assert set(feats) == set(net.taps)
    z = t.run_stem(t.normalize(x))
    for tap, stage in zip(("stem", "layer1", "layer2", "layer3", "layer4"), (None, *t.stages), strict=True):
        z = z if stage is None else stage(z)
        if tap != "layer4":
            layer, bn = net.abn[tap], s.tap_norm(tap)
            mu_s, sd_s = moments(feats[tap], "channel", "sample")
            shape = (1, -1, 1, 1)
            z_hat = (z - layer.running_mean.view(shape)) / (layer.running_var.view(shape) + 1e-5).sqrt()
            z = bn.weight.view(shape) * (sd_s * z_hat + mu_s) + bn.bias.view(shape)
    torch.testing.assert_close(net(x), t.head(z))


def test_running_statistics_are_batch_independent_and_the_batch_option_is_not():
    x = torch.rand(8, 3, 16, 16)
    other = torch.rand(8, 3, 16, 16) * 0.3
    running = tiny_abnn()
    assert not running.batch_dependent
    with torch.no_grad():
        full = running(x)
        ones = torch.cat([running(x[i : i + 1]) for i in range(8)])
        mixed = running(torch.cat([x[:4], other[4:]]))[:4]
    torch.testing.assert_close(full, ones, atol=1e-5, rtol=1e-5)  # batch of N == N batches of 1
    torch.testing.assert_close(full[:4], mixed, atol=1e-5, rtol=1e-5)  # batch mates do not matter
    batch = tiny_abnn(stats="batch")
    assert batch.batch_dependent
    with torch.no_grad():
        a = batch(x)[:4]
        b = batch(torch.cat([x[:4], other[4:]]))[:4]
    assert (a - b).abs().max() > 1e-3  # same samples, other batch mates: other logits


def test_substitute_input_reaches_the_prediction_only_through_the_taps():
    net = tiny_abnn()
    x, x2 = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, substitute_input=x), net(x))
        assert (net(x, substitute_input=x2) - net(x)).abs().max() > 1e-4  # the substitute does re-colour


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
    torch.testing.assert_close(TargetOnly(net)(x), net(x))  # same values, only gradients differ
    torch.manual_seed(3)
    source = normalized(SmallResNet(num_classes=3, width=4), 3).eval()
    transfer = Transfer(net, source)
    torch.testing.assert_close(transfer(x), net(x))
    torch.testing.assert_close(grad(transfer), grad(source))


def test_substitute_stays_frozen_and_in_eval_mode():
    net = tiny_abnn().train()
    assert not net.substitute.training and net.target.training and net.abn["stem"].training
    assert not any(p.requires_grad for p in net.substitute.parameters())
    before = {k: v.clone() for k, v in net.substitute.state_dict().items()}
    net(torch.rand(4, 3, 16, 16))
    for k, v in net.substitute.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_video_abnn_on_5d_clips():
    torch.manual_seed(0)
    spec = DataSpec("clips", 4, (3, 4, 16, 16))
    target = bn_backbone(spec, width=4)
    assert isinstance(target, SmallResNet3d)
    net = ABNN(normalized(target, 3), normalized(SmallResNet3d(4, width=4), 3)).eval()
    x = torch.rand(3, 3, 4, 16, 16, requires_grad=True)
    out = net(x)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_abnn_trains_on_clean_data_with_the_substitute_frozen(tmp_path):
    from safetensors.torch import load_file

    from robustkit.defenses.abnn import build_abnn
    from robustkit.defenses.loading import train_defense
    from robustkit.models.checkpoint import save_weights
    from robustkit.training.settings import TrainSettings

    spec = DataSpec("shapes", 10, (3, 32, 32))
    fresh = build_abnn(spec, TrainSettings())  # the built-in substitute's architecture (mixture-resnet)
    torch.manual_seed(5)
    for p in fresh.substitute.parameters():
        p.data.normal_(0, 0.1)
    sub_path = tmp_path / "substitute.safetensors"
    save_weights(fresh.substitute.model, sub_path)
    info = train_defense(
        "abnn", "shapes", out_dir=tmp_path / "abnn", epochs=1, train_size=64, batch_size=32, device="cpu",
        progress=False, init=sub_path, test_size=64,
    )  # fmt: skip
    assert info["prepared"]["substitute"] == str(sub_path)
    assert info["prepared"]["substitute_arch"] == "zoo:mixture-resnet"
    cost = info["cost"]["passes_by_network"]
    assert cost["target"] == {"forward": 1.0, "backward": 1.0}  # T forward and backward
    assert cost["substitute"] == {"forward": 1.0, "backward": 0.0}  # S forward only: 3 passes per step
    trained = load_file(str(tmp_path / "abnn" / "model.safetensors"))
    for k, v in fresh.substitute.model.state_dict().items():
        torch.testing.assert_close(trained[f"substitute.model.{k}"], v)
    assert (trained["abn.layer3.running_var"] - 1).abs().max() > 0  # the target's running statistics moved


@pytest.mark.parametrize("name", ["abnn", "abnn-batch", "abnn-channel", "abnn-map"])
def test_every_registered_variant_trains_and_loads_for_evaluation(tmp_path, name):
    from robustkit.defenses.abnn import build_abnn
    from robustkit.defenses.base import DEFENSES
    from robustkit.defenses.loading import load_defense, train_defense
    from robustkit.models.checkpoint import save_weights
    from robustkit.training.settings import TrainSettings

    recipe = DEFENSES.create(name)
    sub_path = tmp_path / "substitute.safetensors"
    save_weights(build_abnn(DataSpec("shapes", 10, (3, 32, 32)), TrainSettings()).substitute.model, sub_path)
    info = train_defense(
        name, "shapes", out_dir=tmp_path / name, epochs=1, train_size=16, batch_size=8, device="cpu",
        progress=False, init=sub_path, test_size=8,
    )  # fmt: skip
    assert info["recipe"] == name and set(info["prepared"]["taps"]) == {"stem", "layer1", "layer2", "layer3"}
    defense = load_defense(f"{name}:{tmp_path / name / 'model.safetensors'}", dataset="shapes")
    batch = name != "abnn"  # the per-channel forms use batch statistics at test (see abnn.py)
    assert isinstance(defense.model, ABNN) and defense.capabilities.batch_dependent == batch
    assert defense.model.batch_dependent == batch
    assert set(defense.sources) == {"substitute"}  # transfer in the substitute's shapes columns
    x = torch.rand(3, 3, 32, 32)
    assert defense.sources["substitute"](x).shape == (3, 10) and defense.model(x).shape == (3, 10)
    literal = name == "abnn-channel"
    assert all((layer.affine == "substitute") == literal for layer in defense.model.abn.values())
    assert recipe.capabilities == defense.capabilities
