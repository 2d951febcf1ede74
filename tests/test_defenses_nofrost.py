"""NoFrost: NF-ResNet signal propagation at initialization, the hybrid loss and the training recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d

from robustkit.defenses.adversarial import pgd_examples
from robustkit.defenses.base import StepContext, TrainSettings
from robustkit.defenses.nofrost import NFResNet, hybrid_loss

torch.set_num_threads(1)

STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_outputs(net: NFResNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out, z = {}, net.stem(x)
    out["stem"] = z
    for name in STAGES:
        z = getattr(net, name)(z)
        out[name] = z
    return out


def test_activation_variance_stays_near_one_at_init():
    torch.manual_seed(0)
    net = NFResNet(num_classes=10, width=16, depths=(2, 2, 2, 2))
    x = torch.randn(64, 3, 32, 32)  # normalized input: zero mean, unit variance
    with torch.no_grad():
        outs = stage_outputs(net, x)
    for name, z in outs.items():
        assert 0.7 < float(z.var()) < 1.4, f"{name}: variance {float(z.var()):.3f}"


def test_last_conv_of_each_branch_starts_at_zero():
    net = NFResNet(width=8, depths=(2, 1, 1, 1))
    blocks = [b for s in STAGES for b in getattr(net, s)]
    assert all(
        isinstance(b.conv3, ScaledStdConv2d) and float(b.conv3.gain.detach().abs().max()) == 0.0
        for b in blocks
    )
    x = torch.randn(4, 8, 16, 16)
    block = net.layer1[1]  # an identity-shortcut block: at init it is exactly the identity
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_alpha_beta_scaling_tracks_the_expected_variance():
    """With the zero-init gains switched on, the residual stream's variance grows by alpha^2 per block,
    as the beta = 1 / expected_std scaling assumes, so every branch input stays near unit variance."""
    torch.manual_seed(0)
    alpha = 0.5
    net = NFResNet(width=32, depths=(3, 1, 1, 1), alpha=alpha)
    for b in net.layer1:
        torch.nn.init.ones_(b.conv3.gain)
    x = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        z = net.stem(x)
        expected = 1.0
        for j, block in enumerate(net.layer1):
            branch_in = block.act1(z) * block.beta  # what the branch sees
            second_moment = float((branch_in**2).mean())
            # a ReLU of unit-variance input has second moment 1/2; ScaledStdConv's gamma restores 1
            assert 0.3 < second_moment < 0.75, f"block {j}: branch input second moment {second_moment:.3f}"
            z = block(z)
            expected = (1.0 if j == 0 else expected) + alpha**2
            assert float(z.var()) == pytest.approx(expected, rel=0.3), f"block {j}"
            assert net.expected_var[j] == pytest.approx(expected)


def test_hybrid_loss_is_half_clean_half_adversarial():
    torch.manual_seed(0)
    from robustkit.defenses.backbones import normalized

    model = normalized(NFResNet(num_classes=4, width=4), 3).train()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 4, (6,))
    settings = TrainSettings(eps=8 / 255, steps=10, step_size=1 / 255)
    loss = hybrid_loss(model, x, y, StepContext(settings, torch.Generator().manual_seed(1)))
    x_adv = pgd_examples(
        model, x, y, eps=8 / 255, steps=10, step_size=1 / 255, generator=torch.Generator().manual_seed(1)
    )
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected)
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)  # the attack raised the loss


def test_nofrost_agc_trains_a_few_steps(tmp_path):
    from robustkit.defenses.train import train_defense

    info = train_defense(
        "nofrost-agc",
        "shapes",
        out_dir=tmp_path,
        epochs=1,
        train_size=32,
        batch_size=16,
        device="cpu",
        progress=False,
        test_size=32,
    )
    cost = info["cost"]
    assert info["settings"]["agc"] == 0.01 and cost["steps"] == 2
    # PGD-10 (10 forward + 10 backward + 1 final check) + clean and adversarial forward (2) + backward (2)
    assert cost["passes_per_step"]["total"] == pytest.approx(25.0)
    assert cost["relative_passes"] == pytest.approx(12.5)
