"""The mechanism behind built-in datasets: deterministic synthetic samples generated from a seed.

A built-in dataset is a function ``(split, n, size, seed) -> SyntheticDataset`` registered in
``BUILTIN``. Every sample depends only on (seed, split, index), so any subset, shard or resumed run
sees exactly the same pixels. Nothing is downloaded or written to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..registry import Registry

# The built-in datasets live in ``robustkit.builtin`` (each with its zoo model), a higher layer that
# ``robustkit/__init__`` names as the provider of this registry's kind: the first lookup loads it.
BUILTIN: Registry[Dataset] = Registry("built-in dataset")
register_dataset = BUILTIN.register

SPLIT_SALT = {"train": 0, "test": 1, "val": 2, "holdout": 3}


class SyntheticDataset(Dataset):
    """In-memory tensors ``x`` (N, C, H, W) or (N, C, T, H, W) in [0, 1] and ``y`` (N,) int64."""

    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], **info) -> None:
        self.name = name
        self.x = x
        self.y = y
        self.classes = list(classes)
        self.info = info

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def sample_rng(seed: int, split: str, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + SPLIT_SALT.get(split, 9) * 100_000_007 + index) % (2**63 - 1))
    return g


def generate(
    n: int, seed: int, split: str, render: Callable[[torch.Generator, int], tuple[torch.Tensor, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render samples 0..n-1, each from its own generator. ``render(g, index) -> (x, label)``."""
    xs, ys = [], []
    for i in range(n):
        x, label = render(sample_rng(seed, split, i), i)
        xs.append(x)
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def balanced(
    name: str,
    classes: Sequence[str],
    render: Callable[[torch.Generator, int], torch.Tensor],
    n: int,
    split: str,
    seed: int,
    **info,
) -> SyntheticDataset:
    """``n`` samples with balanced classes: sample ``i`` is of class ``i mod len(classes)``, drawn by
    ``render(g, label)`` from its own generator. ``info`` is kept on the dataset with split and seed."""

    def sample(g: torch.Generator, i: int) -> tuple[torch.Tensor, int]:
        label = i % len(classes)
        return render(g, label), label

    x, y = generate(n, seed, split, sample)
    return SyntheticDataset(name, x, y, classes, split=split, **info, seed=seed)


def image_dataset(
    name: str,
    classes: Sequence[str],
    render: Callable[[torch.Generator, int, int], torch.Tensor],
    *,
    sizes: tuple[int, int],
    **info,
) -> Callable[..., SyntheticDataset]:
    """Register and return built-in image dataset ``name``: ``render(g, label, size)`` draws one image,
    classes are balanced, ``sizes`` are the default (train, test) lengths; ``info`` is kept on it."""

    def dataset(split: str = "test", n: int | None = None, size: int = 32, seed: int = 0) -> SyntheticDataset:
        n = n if n is not None else (sizes[0] if split == "train" else sizes[1])
        return balanced(
            name, classes, lambda g, label: render(g, label, size), n, split, seed, size=size, **info
        )

    dataset.__name__ = dataset.__qualname__ = name
    dataset.__doc__ = (
        f"``{name}``: balanced classes (label = index mod {len(classes)}). "
        f"Default sizes: {sizes[0]} train, {sizes[1]} test."
    )
    register_dataset(name)(dataset)
    return dataset


def grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (u, v) in [-1, 1], shape (size, size)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    return u, v


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def contrasting_colors(g: torch.Generator, min_gap: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """A background and a foreground RGB colour whose mean intensities differ by at least ``min_gap``."""
    while True:
        bg, fg = torch.rand(3, generator=g), torch.rand(3, generator=g)
        if abs(float(fg.mean() - bg.mean())) >= min_gap or float((fg - bg).abs().max()) >= 0.6:
            return bg, fg
