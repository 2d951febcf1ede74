"""Video models: (B, C, T, H, W) -> (B, K), 5-D normalization, multi-clip and SlowFast gradient paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.attacks.base import Counter, loss_and_grad
from robustkit.errors import ConfigError, InputError
from robustkit.functional.losses import ce_loss
from robustkit.models.checkpoint import save_weights
from robustkit.models.normalized import Normalized
from robustkit.models.video import VIDEO_MODELS, MultiClip, PackPathways, SmallVideoNet, video_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny clips: see conftest.one_thread


def clip(b=2, t=8, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


def small_net(k=5) -> nn.Module:
    torch.manual_seed(0)
    return Normalized(SmallVideoNet(num_classes=k, width=8), (0.5,) * 3, (0.25,) * 3).eval()


def test_small_net_maps_clips_to_logits_for_any_length_and_size():
    net = small_net(5)
    for shape in ((2, 3, 8, 32, 32), (1, 3, 16, 48, 40), (3, 3, 4, 16, 16)):
        assert net(torch.rand(shape)).shape == (shape[0], 5)


def test_normalized_broadcasts_over_channels_on_5d():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    x = clip()
    out = Normalized(nn.Identity(), mean, std)(x)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - mean[c]) / std[c])
    # the same model gives the same per-frame result on a 4-D frame batch
    frames = x[:, :, 3]
    torch.testing.assert_close(Normalized(nn.Identity(), mean, std)(frames), out[:, :, 3])


def test_multiclip_logits_and_gradient_follow_exactly_the_prediction_path():
    net = small_net()
    model = MultiClip(net, clips=3, clip_len=4)  # windows start at 0, 4, 8 of 12 frames (disjoint)
    x = clip(t=12)
    y = torch.tensor([1, 3])
    manual_logits = torch.stack([net(x[:, :, s : s + 4]) for s in (0, 4, 8)], 1).mean(1)
    torch.testing.assert_close(model(x), manual_logits)

    # the attack's gradient (input-only autograd through MultiClip) equals the gradient of the manual path
    _, logits, grad = loss_and_grad(model, x, lambda z: ce_loss(z, y), Counter())
    leaf = x.clone().requires_grad_(True)
    manual = torch.stack([net(leaf[:, :, s : s + 4]) for s in (0, 4, 8)], 1).mean(1)
    (expected,) = torch.autograd.grad(ce_loss(manual, y).sum(), leaf)
    torch.testing.assert_close(logits, manual_logits)
    torch.testing.assert_close(grad, expected)
    assert all(grad[:, :, s : s + 4].abs().sum() > 0 for s in (0, 4, 8))


def test_multiclip_overlapping_windows_accumulate_and_unused_frames_get_no_gradient():
    net = small_net()
    model = MultiClip(net, clips=2, clip_len=4)
    assert model.starts(9) == [0, 5]  # frame 4 belongs to no clip
    x = clip(t=9)
    _, _, grad = loss_and_grad(model, x, lambda z: z[:, 0], Counter())
    assert grad[:, :, 4].abs().sum() == 0
    assert grad[:, :, :4].abs().sum() > 0 and grad[:, :, 5:].abs().sum() > 0
    with pytest.raises(InputError):
        MultiClip(net, clips=2, clip_len=10)(x)


def test_attack_on_multiclip_model_is_judged_by_the_same_path():
    model = MultiClip(small_net(), clips=2)
    x, y = clip(b=4, t=16), torch.tensor([0, 1, 2, 3])
    result = create_attack("video-pgd", eps=8 / 255, steps=3)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1) != y, result.success)


@pytest.fixture(scope="module")
def slowfast() -> PackPathways:
    torch.manual_seed(0)
    model = video_model(
        "slowfast_r50", num_classes=4, normalize=False, stem_dim_outs=(16, 2), dropout_rate=0.0
    )
    assert isinstance(model, PackPathways)
    return model


def test_slowfast_packs_pathways_inside_forward(slowfast):
    x = clip(b=2, t=8)
    slow, fast = slowfast.pathways(x)
    assert slow.shape[2] == 2 and fast.shape[2] == 8
    with torch.no_grad():
        torch.testing.assert_close(slowfast(x), slowfast.model([slow, fast]))
    assert slowfast(x).shape == (2, 4)
    with pytest.raises(InputError):
        slowfast(clip(t=6))


def test_slowfast_every_pathway_gradient_reaches_the_input(slowfast):
    x = clip(b=2, t=8)
    y = torch.tensor([0, 2])
    slow, fast = (p.detach().requires_grad_(True) for p in slowfast.pathways(x))
    g_slow, g_fast = torch.autograd.grad(ce_loss(slowfast.model([slow, fast]), y).sum(), [slow, fast])
    assert g_slow.abs().sum() > 0 and g_fast.abs().sum() > 0
    # the attack's input gradient through the wrapper = fast gradient + slow gradient scattered back
    # to the frames the slow pathway sampled
    _, _, grad = loss_and_grad(slowfast, x, lambda z: ce_loss(z, y), Counter())
    expected = g_fast.clone()
    expected[:, :, torch.linspace(0, 7, 2).long()] += g_slow
    torch.testing.assert_close(grad, expected)
    assert (grad - g_fast).abs().sum() > 0  # the slow pathway's share is really there


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("r3d_18", {}, (1, 3, 8, 32, 32)),
        ("mc3_18", {}, (1, 3, 8, 32, 32)),
        ("r2plus1d_18", {}, (1, 3, 8, 32, 32)),
        ("s3d", {}, (1, 3, 8, 64, 64)),
        ("x3d_xs", {"width_factor": 1.0}, (1, 3, 4, 64, 64)),
        ("slow_r50", {"stem_dim_out": 8}, (1, 3, 8, 64, 64)),
    ],
)
def test_registered_architectures_build_without_downloads_and_return_logits(name, kwargs, shape):
    torch.manual_seed(0)
    model = video_model(name, num_classes=7, **kwargs)
    assert not model.training
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (1, 7)


def test_registry_lists_torchvision_and_pytorchvideo_families():
    names = VIDEO_MODELS.names()
    for expected in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "x3d_s", "slow_r50", "slowfast_r50"):
        assert expected in names
    with pytest.raises(ConfigError, match="did you mean"):
        video_model("r3d18", num_classes=3)


def test_local_weights_load_into_the_bare_architecture(tmp_path):
    torch.manual_seed(1)
    a = video_model("r3d_18", num_classes=3)
    path = tmp_path / "r3d.safetensors"
    save_weights(a.model, path)
    b = video_model("r3d_18", num_classes=3, weights=path, clips=2)
    x = clip(b=1, t=8)
    with torch.no_grad():
        expected = torch.stack([a(x[:, :, :4]), a(x[:, :, 4:])], 1).mean(1)
        torch.testing.assert_close(b(x), expected)


def test_cli_model_loader_builds_video_architectures_with_their_own_statistics(tmp_path):
    """``--model r3d_18 --weights FILE``: the video registry's builder and Kinetics normalization, not ImageNet's."""
    from robustkit.models.loading import load_model
    from robustkit.models.video import KINETICS_MEAN

    torch.manual_seed(2)
    reference = video_model("r3d_18", num_classes=3)
    path = tmp_path / "r3d.safetensors"
    save_weights(reference.model, path)
    model, info = load_model("r3d_18", weights=path, num_classes=3)
    assert isinstance(model, Normalized) and info["kind"] == "architecture" and info["video"]
    torch.testing.assert_close(torch.tensor(info["mean"]), torch.tensor(KINETICS_MEAN))
    x = clip(b=1, t=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(ConfigError, match="--weights"):
        load_model("r3d_18", num_classes=3)
