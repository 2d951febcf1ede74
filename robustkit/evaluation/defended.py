"""Evaluating defenses: honor each defense's declared capabilities, and compare several in one run.

- ``stochastic``: the model is attacked and judged through ``Expectation(model, eot_samples)`` (EOT
  over the defense's own randomness: gradients and logits averaged over draws).
- ``batch_dependent``: batches are fixed chunks of consecutive samples in every run, resume and
  shard (the runner's design); the composition of every batch is recorded in the store.
- ``non_differentiable``: the named modules run forward as they are and are differentiated through
  the identity (BPDA, Athalye et al. 2018).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..defenses.adaptive import honor
from ..errors import ConfigError
from .files import atomic_write, safe_name


def split_defenses(spec: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """'a,b' -> ['a', 'b']; a list may also hold Defense objects or models."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() if isinstance(s, str) else s for s in items if not isinstance(s, str) or s.strip()]
    if not names:
        raise ConfigError("--defense needs at least one defense name (comma-separated)")
    return names


def evaluate_defenses(defenses: str | list[Any], *, data: Any = "shapes", name: str | None = None, out: str | Path = "reports",
                      device: str = "auto", progress: bool = True, eot_samples: int = 20, **kwargs: Any):  # fmt: skip
    """Evaluate each defense under the same suite and data, then write a side-by-side comparison.

    Returns (list of RunResult, path of the comparison report).
    """
    from ..defenses.loading import load_defense
    from ..device import resolve_device
    from ..report import render_report
    from .compare import compare
    from .runner import evaluate

    names = split_defenses(defenses)
    dev = resolve_device(device)
    loaded = [
        load_defense(n, dataset=data if isinstance(data, str) else "shapes", device=dev, progress=progress)
        for n in names
    ]
    base = name or f"defenses-{safe_name(str(data))}"
    results = []
    for d in loaded:
        model, record = honor(d, eot_samples)
        res = evaluate(model=model, data=data, out=out, name=f"{base}-{safe_name(d.name)}", device=dev, progress=progress,
                       model_name=d.name, defense_info=record, **kwargs)  # fmt: skip
        results.append(res)
    rows = [
        r.summary
        | {
            "defense": d.name,
            "capabilities": d.capabilities.as_dict(),
            "training_cost": d.info.get("cost"),
            "published": d.info.get("published"),
        }  # fmt: skip
        for r, d in zip(results, loaded, strict=True)
    ]
    comparison = compare(rows)
    out_dir = Path(out)
    atomic_write(
        out_dir / f"{safe_name(base)}-comparison.json", json.dumps(comparison, indent=2, default=str)
    )
    report = None
    if kwargs.get("report", True):
        report = render_report([r.run_dir for r in results], out_dir / f"{safe_name(base)}-comparison.html",
                               title=f"defenses on {data}")  # fmt: skip
    return results, report
