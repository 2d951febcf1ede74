"""Stage discovery (defenses/taps.py): every ResNet family splits into stem, four stages and head whose
composition is the network's own forward pass, with the channel counts ABNN's layers are sized by."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.defenses.abnn import ABNN
from robustkit.defenses.backbones import build_backbone, normalized
from robustkit.defenses.taps import TAPS, stages
from robustkit.errors import ConfigError
from robustkit.models.normalized import Normalized
from robustkit.training.data import DataSpec

IMAGES = DataSpec("shapes", 5, (3, 32, 32))
CLIPS = DataSpec("shapes-video", 4, (3, 8, 32, 32))


@pytest.mark.parametrize(
    ("spec", "arch", "family", "channels"),
    [
        (IMAGES, None, "robustkit", [4, 4, 8, 16, 32]),
        (IMAGES, "torchvision:resnet18", "torchvision", [64, 64, 128, 256, 512]),
        (IMAGES, "timm:resnet18", "timm", [64, 64, 128, 256, 512]),
        (CLIPS, None, "robustkit", [4, 4, 8, 16, 32]),
        (CLIPS, "video:r3d_18", "torchvision-video", [64, 64, 128, 256, 512]),
        (CLIPS, "video:mc3_18", "torchvision-video", [64, 64, 128, 256, 512]),
        (CLIPS, "video:r2plus1d_18", "torchvision-video", [64, 64, 128, 256, 512]),
    ],
)
def test_stages_reproduce_the_forward_pass(spec, arch, family, channels, one_thread):
    net = normalized(build_backbone(spec, arch, width=4), spec.channels).eval()
    view = stages(net)
    assert view.family == family
    assert [view.channels(t) for t in TAPS] == channels
    x = torch.rand(2, *spec.shape)
    with torch.no_grad():
        torch.testing.assert_close(view.forward(x), net(x), atol=1e-5, rtol=1e-5)
    # the normalization comes from the network's own wrapper, not from ABNN
    other = Normalized(net.model, [0.1] * 3, [0.9] * 3).eval()
    with torch.no_grad():
        torch.testing.assert_close(stages(other).forward(x), other(x), atol=1e-5, rtol=1e-5)
        assert (stages(other).forward(x) - view.forward(x)).abs().max() > 1e-4


def test_pytorchvideo_resnet_blocks(one_thread):
    from pytorchvideo.models.resnet import create_resnet

    from robustkit.models.video import adaptive_pooling

    torch.manual_seed(0)
    net = adaptive_pooling(
        create_resnet(model_depth=50, model_num_class=3, stem_dim_out=8, head_activation=None)
    ).eval()
    view = stages(net)
    assert view.family == "pytorchvideo" and view.mean is None
    assert [view.channels(t) for t in TAPS] == [8, 32, 64, 128, 256]
    x = torch.rand(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(view.forward(x), net(x), atol=1e-5, rtol=1e-5)


def test_not_a_resnet_is_a_clear_config_error():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ConfigError, match="stem, four stages and head.*layer1..layer4"):
        stages(plain)
    half = build_backbone(IMAGES, "torchvision:resnet18")
    del half.maxpool
    with pytest.raises(ConfigError, match="conv1/bn1/relu/maxpool"):
        stages(half)
    with pytest.raises(ConfigError, match="taps must be distinct"):
        ABNN(
            normalized(build_backbone(IMAGES, None, width=4), 3),
            normalized(build_backbone(IMAGES), 3),
            taps=["fc"],
        )
