"""Evaluating defenses: honor each defense's declared capabilities, and compare several in one run.

- ``stochastic``: the model is attacked and judged through ``Expectation(model, eot_samples)`` (EOT
  over the defense's own randomness: gradients and logits averaged over draws).
- ``batch_dependent``: batches are fixed chunks of consecutive samples in every run, resume and
  shard (the runner's design); the composition of every batch is recorded in the store.
- ``non_differentiable``: the named modules run forward as they are and are differentiated through
  the identity (BPDA, Athalye et al. 2018).

Several defenses side by side: ``robustkit.api.evaluate_defenses``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from torch import nn

from ..attacks.bpda import BPDA
from ..attacks.expectation import Expectation
from ..errors import ConfigError


def honor(defense: Any, eot_samples: int = 20) -> tuple[nn.Module, dict[str, Any]]:
    """The model to attack, and a record of how each declared capability was honored."""
    caps = defense.capabilities
    model: nn.Module = defense.model
    how: list[str] = []
    if caps.non_differentiable:
        model = copy.deepcopy(model)
        for name in caps.non_differentiable:
            try:
                module = model.get_submodule(name)
            except AttributeError as exc:
                raise ConfigError(
                    f"defense '{defense.name}' declares non-differentiable module '{name}', which it does not have"
                ) from exc
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, BPDA(module))
        how.append(f"BPDA (identity backward) through {', '.join(caps.non_differentiable)}")
    if caps.stochastic:
        model = Expectation(model, samples=eot_samples)
        how.append(f"EOT: attacked and judged on logits averaged over {eot_samples} draws")
    if caps.batch_dependent:
        how.append(
            "batch-dependent: every batch is a fixed chunk of consecutive samples (the same in every run, resume "
            "and shard) and its composition is recorded; a sample's result depends on its batch-mates"
        )
    if not how:
        how.append("no special handling needed: deterministic, batch-independent, differentiable")
    return model, {
        "name": defense.name,
        "capabilities": caps.as_dict(),
        "how_honored": how,
        "info": _plain(defense.info),
    }


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(info, default=str))


def split_defenses(spec: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """'a,b' -> ['a', 'b']; a list may also hold Defense objects or models."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() if isinstance(s, str) else s for s in items if not isinstance(s, str) or s.strip()]
    if not names:
        raise ConfigError("--defense needs at least one defense name (comma-separated)")
    return names
