"""Random draws from a generator, or from one generator per sample.

Passing a list of generators (one per sample) makes every sample's randomness independent of how
the samples are batched, which is what makes results identical across batch sizes and resumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


def _draw(fn, shape, generator: GeneratorLike, device, dtype) -> torch.Tensor:
    if generator is None:
        return fn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    parts = [fn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in gens]
    return torch.cat(parts).to(device)


def uniform(shape, generator: GeneratorLike, device=None, dtype=torch.float32) -> torch.Tensor:
    return _draw(torch.rand, tuple(shape), generator, device, dtype)


def normal(shape, generator: GeneratorLike, device=None, dtype=torch.float32) -> torch.Tensor:
    return _draw(torch.randn, tuple(shape), generator, device, dtype)


def subset(generator: GeneratorLike, mask: torch.Tensor) -> GeneratorLike:
    """The generators of the samples selected by a boolean mask (a shared generator stays shared)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    keep = mask.tolist()
    return [g for g, k in zip(generator, keep, strict=True) if k]


def sample_generators(
    seed: int, indices: Sequence[int], salt: int = 0, device="cpu"
) -> list[torch.Generator]:
    """One generator per sample, seeded from (seed, salt, sample index)."""
    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        g.manual_seed((int(seed) * 1_000_003 + int(salt) * 7_919 + int(i)) % (2**63 - 1))
        gens.append(g)
    return gens


def shared(generator: GeneratorLike) -> torch.Generator | None:
    """One generator for batch-level draws (EOT parameters, square positions).

    A list of per-sample generators yields a new generator seeded from the first sample's stream, so
    the draw is still reproducible from the same seeds.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if not gens:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=gens[0], device=gens[0].device))
    g = torch.Generator(device=gens[0].device)
    g.manual_seed(seed)
    return g
