"""Resolve ``--data`` specs: a built-in dataset name, a manifest name from ``datasets/``, or a manifest path.

A manifest is YAML: ``name``, ``format`` (a registered loader), ``root``, ``source``, ``license``,
``checksum``, ``classes`` and ``preprocessing``. Loaders are registered with ``register_format``.
"""

from __future__ import annotations

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
) -> Dataset:
    """A torch Dataset of (x in [0, 1], label) with a ``classes`` attribute.

    ``n`` asks a built-in dataset for its first ``n`` samples only (each built-in sample depends only
    on its index, so they equal the first ``n`` of the whole split); files on disk ignore it.
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        x, y = spec
        k = int(y.max()) + 1 if len(y) else 0
        return SyntheticDataset("tensors", x, y.long(), [str(i) for i in range(k)])
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
