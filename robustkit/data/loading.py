"""Resolve ``--data`` specs: a built-in dataset name, a manifest name from ``datasets/``, or a manifest path.

A manifest is YAML: ``name``, ``format`` (a registered loader), ``root``, ``source``, ``license``,
``checksum``, ``classes`` and ``preprocessing``. Loaders are registered with ``register_format``.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from ..registry import Registry, check_keys, suggest
from .synthetic import BUILTIN, SyntheticDataset

FORMATS: Registry[Dataset] = Registry("dataset format", autoload=("robustkit.data",))
register_format = FORMATS.register

MANIFEST_KEYS = (
    "name",
    "format",
    "root",
    "source",
    "license",
    "checksum",
    "classes",
    "preprocessing",
    "splits",
    "description",
    "objects",
)


def manifest_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("robustkit.manifests").iterdir() if p.name.endswith(".yaml")
    )


def read_manifest(spec: str) -> tuple[dict[str, Any], Path]:
    path = Path(spec).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        candidate = resources.files("robustkit.manifests") / f"{spec}.yaml"
        if not candidate.is_file():
            known = BUILTIN.names() + manifest_names()
            raise ConfigError(
                f"unknown dataset '{spec}'{suggest(spec, known)}. Built-in: {', '.join(BUILTIN.names())}; "
                f"manifests: {', '.join(manifest_names())}; or a path to a manifest .yaml"
            )
        path = Path(str(candidate))
    if not path.is_file():
        raise ConfigError(f"dataset manifest {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a manifest must be a mapping with keys {', '.join(MANIFEST_KEYS)}")
    check_keys(raw, MANIFEST_KEYS, str(path))
    if "format" not in raw:
        raise ConfigError(f"{path}: missing 'format' (one of {', '.join(FORMATS.names())})")
    return raw, path


def load_dataset(
    spec: str | Dataset | tuple[torch.Tensor, torch.Tensor],
    split: str = "test",
    *,
    root: str | Path | None = None,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """A torch Dataset of (x in [0, 1], label) with a ``classes`` attribute.

    ``n`` asks a built-in dataset for its first ``n`` samples only (each built-in sample depends only
    on its index, so they equal the first ``n`` of the whole split); files on disk ignore it.
    ``num_classes``: the class count of ``(x, y)`` tensor data (without it, ``max(y) + 1`` with a
    warning: a subset that lacks the last classes would be counted short).
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return tensor_dataset(*spec, num_classes=num_classes)
    if spec in BUILTIN:
        return BUILTIN.create(spec, split=split, seed=seed, **({"n": n} if n is not None else {}))
    manifest, path = read_manifest(str(spec))
    root_dir = Path(root or manifest.get("root") or "").expanduser()
    if not str(root) and not manifest.get("root"):
        raise ConfigError(f"{path}: no 'root' in the manifest; pass --data-root DIR")
    if not root_dir.exists():
        raise InputError(
            f"dataset directory {root_dir} (from {'--data-root' if root else path}) does not exist; "
            f"download {manifest.get('name', spec)} from {manifest.get('source', 'its source')} and point --data-root at it"
        )
    loader = FORMATS.get(str(manifest["format"]))
    return loader(manifest, split, root_dir)


def tensor_dataset(x: torch.Tensor, y: torch.Tensor, *, num_classes: int | None = None) -> SyntheticDataset:
    """``(x, y)`` tensors as a dataset with ``num_classes`` classes (inferred as ``max(y) + 1``, with a
    warning, when not given). A label outside ``[0, num_classes)`` is an ``InputError`` naming its index."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError(
            f"data (x, y) must be two torch tensors, got ({type(x).__name__}, {type(y).__name__})"
        )
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or len(y) != len(x):
        raise InputError(
            f"labels y must be integer class indices of shape ({len(x)},) matching x, got dtype {y.dtype} "
            f"shape {tuple(y.shape)}"
        )
    y = y.long()
    if num_classes is None:
        num_classes = int(y.max()) + 1 if len(y) else 0
        warnings.warn(
            f"(x, y) data: the class count was inferred as max(y) + 1 = {num_classes}; pass num_classes= "
            "(the model's number of outputs) if the labels do not cover every class",
            UserWarning,
            stacklevel=2,
        )
    bad = ((y < 0) | (y >= num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"label y[{i}] = {int(y[i])} is outside [0, {num_classes}) (num_classes={num_classes}); "
            f"{len(bad)} label(s) out of range"
        )
    return SyntheticDataset("tensors", x, y, [str(i) for i in range(num_classes)])
