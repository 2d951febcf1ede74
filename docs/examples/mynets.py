"""An example architecture for ``robustkit train --arch mynets:tiny_cnn`` (docs/training.md)."""

from torch import nn


def tiny_cnn(num_classes: int, in_ch: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip
