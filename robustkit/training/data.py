"""What training needs from a dataset: a (possibly shortened) split, its ``DataSpec``, clean accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from ..data.loading import load_dataset
from ..data.synthetic import BUILTIN
from ..errors import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """What a dataset looks like to a model: ``shape`` is (C, H, W) for images, (C, T, H, W) for video."""

    name: str
    num_classes: int
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def video(self) -> bool:
        return len(self.shape) == 4

    def as_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(str(d["name"]), int(d["num_classes"]), tuple(int(s) for s in d["shape"]))


class Head(Dataset):
    """The first ``n`` samples of a dataset, keeping its ``classes``."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base, self.n = base, n
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]


def load_split(dataset: str, split: str, n: int | None = None, *, root: str | None = None) -> Dataset:
    """A split of a built-in dataset (generated with only ``n`` samples) or of any loadable dataset (a
    manifest: image folder, GTSRB's CSV layout, UCF-101/HMDB-51 video, ...; ``root`` overrides its
    directory), cut to its first ``n`` samples."""
    if dataset in BUILTIN and n is not None:
        try:
            return BUILTIN.create(dataset, split=split, n=n)
        except ConfigError:
            pass  # a built-in without an ``n`` argument: take the head below
    ds = load_dataset(dataset, split, root=root)
    return Head(ds, n) if n is not None and n < len(ds) else ds


def spec_for(dataset: str, ds: Dataset) -> DataSpec:
    classes = list(getattr(ds, "classes", []))
    if len(ds) == 0:
        raise ConfigError(f"dataset '{dataset}' is empty")
    x0 = ds[0][0]
    if not classes:
        raise ConfigError(f"dataset '{dataset}' has no 'classes' attribute; robustkit needs the class list")
    return DataSpec(name=str(dataset), num_classes=len(classes), shape=tuple(int(s) for s in x0.shape))


def batches(dataset: Dataset, batch_size: int, generator: torch.Generator | None = None, **kw) -> DataLoader:
    """A DataLoader that draws nothing from the global generator (its per-iteration base seed comes from
    ``generator``, a fresh one unless given)."""
    return DataLoader(dataset, batch_size=batch_size, generator=generator or torch.Generator(), **kw)


class _Shard(Sampler[list[int]]):
    """The ``rows`` of every batch of ``batches``, after skipping the first ``skip`` batches (their
    indices are drawn, their samples never loaded)."""

    def __init__(self, batches: BatchSampler, rows: slice, skip: int) -> None:
        self.batches, self.rows, self.skip = batches, rows, skip

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield batch[self.rows]

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


def epoch_batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator, *, rows: slice | None = None, skip: int = 0
) -> DataLoader:
    """One epoch of shuffled global batches of ``batch_size`` (the last partial one dropped), the order
    drawn from ``generator`` exactly as ``DataLoader(shuffle=True, generator=generator)`` draws it; each
    batch cut to ``rows`` (this process's shard) and the first ``skip`` batches left out (a resumed epoch)."""
    order = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)
    shard = _Shard(order, rows or slice(0, batch_size), skip)
    return DataLoader(dataset, batch_sampler=shard, generator=generator)


def accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches(dataset, batch_size):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    model.train(was)
    return correct / max(total, 1)
