"""Defenses by name: the ``--defense`` list (registered names, ``name:weights`` and ``module:function``
factories) resolved into :class:`~robustkit.defenses.base.Defense` objects.

How each defense's capabilities are honored (EOT, BPDA, batch views, transfer) is
``robustkit.defenses.adaptive.adapt``, applied by the runner; the side-by-side run is
``robustkit.api.evaluate_defenses``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..defenses.base import DEFENSES, Defense, as_defense
from ..defenses.loading import load_defense
from ..errors import ConfigError
from ..models.loading import call_factory


def split_defenses(spec: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """'a,b' -> ['a', 'b']; a list may also hold Defense objects or models."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() if isinstance(s, str) else s for s in items if not isinstance(s, str) or s.strip()]
    if not names:
        raise ConfigError("--defense needs at least one defense name (comma-separated)")
    return names


def is_factory(spec: Any) -> bool:
    """``package.module:function`` (a user's factory), as opposed to a registered name or ``name:weights``."""
    return isinstance(spec, str) and ":" in spec and spec.partition(":")[0] not in DEFENSES


def resolve_defense(spec: Any, *, dataset: str, device: torch.device | str, progress: bool = True) -> Defense:
    """One ``--defense`` item as a Defense on ``device``: a registered recipe (trained on first use), a
    ``name:weights`` checkpoint, a ``package.module:function`` factory returning an ``nn.Module`` (named
    after the spec, no capabilities declared) or a Defense, or a Defense / model object. A user's model
    keeps the mode it is given."""
    if is_factory(spec):
        obj = call_factory(spec, "--defense")
        spec = obj if isinstance(obj, Defense) else as_defense(obj, name=spec, source=spec)
    return load_defense(spec, dataset=dataset, device=device, progress=progress)
