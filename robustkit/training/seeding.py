"""Deterministic initial weights without touching the caller's random state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to ``seed``; restore the caller's state after.

    Layers draw their initial weights from the global CPU generator, so this is how a model is built
    with the same weights every time. Only the CPU generator is seeded (``torch.manual_seed`` would also
    reseed every CUDA generator, lazily, outside the fork), so no global state changes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
