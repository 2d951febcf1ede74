"""Compact ResNets for small inputs: ``SmallResNet`` for 32x32 images (the zoo's default architecture)
and ``SmallResNet3d``, its twin for short clips (B, C, T, H, W) that strides in space only."""

from __future__ import annotations

from torch import nn

# (convolution, batch norm, global pool) per number of spatial dimensions
_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN and a projection shortcut when the shape changes. With ``dims=3``
    the stride applies to height and width only (time is kept)."""

    def __init__(self, cin: int, cout: int, stride: int, dims: int = 2) -> None:
        super().__init__()
        conv, bn, _ = _LAYERS[dims]
        s = stride if dims == 2 else (1, stride, stride)
        self.conv1 = conv(cin, cout, 3, s, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, s, bias=False), bn(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem + four stages (ResNet-18 layout, narrower). ``stem``, ``layer1``..``layer4`` are the taps
    other components (ABNN) hook into."""

    dims = 2

    def __init__(
        self, num_classes: int = 10, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1), in_ch: int = 3
    ):
        super().__init__()
        conv, bn, pool = _LAYERS[self.dims]
        self.stem = nn.Sequential(conv(in_ch, width, 3, 1, 1, bias=False), bn(width), nn.ReLU(inplace=True))
        chans = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for i, (c, n) in enumerate(zip(chans, blocks, strict=True)):
            stage = [
                BasicBlock(cin if j == 0 else c, c, (1 if i == 0 else 2) if j == 0 else 1, self.dims)
                for j in range(n)
            ]
            layers.append(self.stage(stage))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = pool(1)
        self.fc = nn.Linear(cin, num_classes)

    def stage(self, blocks: list[nn.Module]) -> nn.Module:
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


class SmallResNet3d(SmallResNet):
    """``SmallResNet`` in 3-D for short clips (B, C, T, H, W): one block per stage, each stage the block
    itself (``layer1.conv1``, as the defense checkpoints store it)."""

    dims = 3

    def __init__(self, num_classes: int = 10, width: int = 8, in_ch: int = 3) -> None:
        super().__init__(num_classes, width, (1, 1, 1, 1), in_ch)

    def stage(self, blocks: list[nn.Module]) -> nn.Module:
        (block,) = blocks
        return block
