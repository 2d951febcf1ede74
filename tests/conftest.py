"""Shared fixtures: tiny models, tiny data, fixed seeds. Zoo models are cached across runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


class TinyNet(nn.Module):
    """A small conv net with BatchNorm (so buffer preservation is tested) for 3x16x16 or 3x32x32 input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.fc = nn.Linear(8 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny problems: as fast, and far faster on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)


@pytest.fixture(scope="session")
def shapes_model() -> nn.Module:
    from robustkit.builtin.zoo import load_zoo_model

    return load_zoo_model("shapes-resnet", progress=False)


@pytest.fixture(scope="session")
def shapes_test():
    from robustkit.builtin.shapes import shapes

    return shapes("test", n=200)


def pytest_collection_modifyitems(config, items):
    """GPU tests run wherever CUDA is available and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
