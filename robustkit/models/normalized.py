"""Normalization inside the model, broadcasting over image (B, C, H, W) and video (B, C, T, H, W) input;
the ``--normalize`` option parsed, and what a run records of it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalize = tuple[tuple[float, ...], tuple[float, ...]]
# ``normalize`` of a request: None (the architecture's own, from its metadata), "none" (no normalization
# added: the model takes [0, 1] input), or (mean, std) per channel
NormalizeOption = Normalize | str | None
NORMALIZE_HELP = "imagenet, none, MEAN,STD (one value each for every channel) or M1,M2,M3,S1,S2,S3"


def parse_normalize(value: object) -> NormalizeOption:
    """``--normalize`` as a request option: None (the architecture's default), ``"none"``, or ``(mean,
    std)`` tuples. Accepts ``imagenet``, ``none``, ``MEAN,STD``, ``M1,M2,M3,S1,S2,S3``, or a ``(mean, std)``
    pair of numbers or sequences (the Python API)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default", "auto")):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "none":
            return "none"
        if text == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) % 2 or not numbers:
            raise ConfigError(f"--normalize {value!r}: expected {NORMALIZE_HELP}")
        half = len(numbers) // 2
        mean, std = tuple(numbers[:half]), tuple(numbers[half:])
    elif isinstance(value, Sequence) and len(value) == 2:
        mean, std = (tuple(float(v) for v in (p if isinstance(p, Sequence) else [p])) for p in value)
    else:
        raise ConfigError(f"normalize={value!r}: expected {NORMALIZE_HELP}, or a (mean, std) pair")
    if len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ConfigError(
            f"--normalize {value!r}: expected as many means as stds, finite, every std > 0 ({NORMALIZE_HELP})"
        )
    return mean, std


def normalization_record(mean: Sequence[float] | None, std: Sequence[float] | None, source: str) -> dict:
    """What a run records of its input normalization: mean and std per channel (None: none added to the
    model) and where they come from."""
    if mean is None or std is None:
        return {"mean": None, "std": None, "source": source}
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "source": source}


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
