"""Normalization inside the model, broadcasting over image (B, C, H, W) and video (B, C, T, H, W) input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``model((x - mean) / std)`` with per-channel mean and std, on 4-D and 5-D input."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).flatten(), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).flatten(), persistent=False)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean has {self.mean.numel()} channels but std has {self.std.numel()}")
        if (self.std <= 0).any():
            raise ValueError("std must be positive")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.mean.to(x.dtype).view(shape)
        std = self.std.to(x.dtype).view(shape)
        return self.model((x - mean) / std)
