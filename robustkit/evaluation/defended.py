"""Defenses by name: the ``--defense`` list (registered names, ``name:weights`` and ``module:function``
factories) resolved into :class:`~robustkit.defenses.base.Defense` objects.

How each defense's capabilities are honored (EOT, BPDA, batch views, transfer) is
``robustkit.defenses.adaptive.adapt``, applied by the runner; the side-by-side run is
``robustkit.api.evaluate_defenses``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..data.synthetic import BUILTIN
from ..defenses.base import DEFENSES, Defense, as_defense, split_spec
from ..defenses.loading import cache_path, load_defense
from ..errors import ConfigError
from ..models.loading import call_factory
from ..training.checkpoints import read_final
from ..training.data import batches, load_split, spec_for
from ..training.seeding import fixed_seed
from ..training.settings import StepContext


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


@dataclass(frozen=True)
class Planned:
    """One ``--defense`` item before anything runs: whether it must be trained first (a registered recipe
    whose weights are not in the cache) and, if so, its steps and the estimated training time."""

    spec: Any
    name: str
    train: bool = False
    steps: int = 0
    seconds: float | None = None


def plan_defenses(specs: list[Any], *, dataset: str, device: torch.device) -> list[Planned]:
    """What evaluating ``specs`` on ``dataset`` involves: each registered recipe not cached (it trains once,
    then comes from the cache: a cached defense is never trained again) with its step count and the time
    its first training steps take here (``estimate_training``); everything else is ready."""
    planned = []
    for spec in specs:
        name = spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)
        if not isinstance(spec, str) or is_factory(spec) or split_spec(spec)[1] is not None:
            planned.append(Planned(spec, str(name)))
            continue
        recipe = DEFENSES.create(split_spec(spec)[0]).trained_recipe()
        if read_final(cache_path(recipe.name, dataset)) is not None:
            planned.append(Planned(spec, spec))
            continue
        steps, per_step = estimate_training(recipe.name, dataset, device)
        planned.append(Planned(spec, spec, True, steps, steps * per_step))
    return planned


def estimate_training(name: str, dataset: str, device: torch.device, probes: int = 2) -> tuple[int, float]:
    """(steps, seconds per step) of training recipe ``name`` on ``dataset`` with its own settings: the steps
    from its epochs, train size and batch size; the seconds from ``probes`` timed steps of its own loss
    (inner attack included) on one batch, after one untimed step. The estimate leaves out what the
    recipe prepares first (a substitute or a base model trained on first use announces itself)."""
    recipe = DEFENSES.create(name).trained_recipe()
    s = recipe.settings
    train = load_split(dataset, "train", s.batch_size)  # one batch to time; the sample count below
    generated = dataset in BUILTIN and s.train_size is not None  # a built-in generates train_size samples
    n = s.train_size if generated else len(load_split(dataset, "train", s.train_size))
    steps = s.epochs * (n // s.batch_size)
    model = recipe.build(spec_for(dataset, train), s).to(device).train()
    params = recipe.trainable(model)
    x, y = next(iter(batches(train, s.batch_size)))
    x, y = x.to(device), y.to(device)
    ctx = StepContext(settings=s, generator=torch.Generator().manual_seed(0))
    with fixed_seed(0):  # the probe draws nothing from the caller's generator
        for i in range(probes + 1):
            if i == 1:
                start = time.perf_counter()
            value = recipe.loss(model, x, y, ctx)
            grads = torch.autograd.grad(value, params, allow_unused=True)
    del grads
    return steps, (time.perf_counter() - start) / probes
