"""The Python API: ``robustkit.evaluate(...)`` and ``robustkit evaluate`` are ``evaluate`` / ``run`` here.

Each call builds one :class:`~robustkit.evaluation.config.RunConfig`, runs the evaluation
(``robustkit.evaluation.runner``) and then renders the report from the stored results
(``robustkit.report``): the runner never renders, the report never evaluates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .attacks import ATTACKS
from .builtin.zoo import ZOO
from .data.loading import manifest_names
from .data.synthetic import BUILTIN
from .defenses.base import DEFENSES, Defense
from .device import resolve_device
from .evaluation import distributed, runner
from .evaluation.compare import compare
from .evaluation.config import RunConfig
from .evaluation.defended import Planned, plan_defenses, resolve_defense, split_defenses
from .evaluation.runner import RunResult
from .evaluation.suite import builtin_suites
from .files import atomic_write, safe_name
from .models.state import preserved
from .report import render_report
from .training.loop import about

log = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunResult", "catalogue", "evaluate", "evaluate_defenses", "run"]


def run(config: RunConfig) -> RunResult:
    """Evaluate ``config`` into its run directory, then render ``report.html`` (unless ``config.report``
    is off; under torchrun rank 0 renders). A user's model object comes back as it was given: mode,
    ``requires_grad``, ``.grad`` and buffers."""
    user = config.model.model if isinstance(config.model, Defense) else config.model
    with preserved(
        user, freeze=False
    ):  # the user's model is left as found (a train-mode BN's statistics too)
        result = runner.run(config)
    if config.report and distributed.world()[0] == 0:
        log.info("run %s: writing the report", result.run_dir.name)
        result.report = render_report([result.run_dir], result.run_dir / "report.html")
    return result


def evaluate(model: Any = None, data: Any = "shapes", suite: Any = "quick", **options: Any) -> RunResult:
    """Evaluate ``model`` on ``data`` under ``suite``; write the run directory and its report.

    ``model``: a model (``nn.Module``, spec string, ART estimator) or a defense (``as_defense(model,
    capabilities=Capabilities(...))``); the runner attacks it as deployed (``defenses.adaptive.adapt``:
    EOT, BPDA, batch views, transfer views), and a user's model is evaluated in the mode it is given.
    ``data``: a dataset name, manifest, dataset object or ``(x, y)`` tensors (with ``num_classes=K``).

    ``options`` are the fields of :class:`RunConfig`: ``eps`` (every attack of the suite at this eps,
    e.g. ``8/255`` or ``'8/255'``), ``keep_adversarial`` (store every adversarial example:
    ``result.adversarial('pgd@8/255')`` returns ``(indices, x_adv)``), ``num_classes``, ``capabilities``
    (declared for a plain model, added to a defense's), ``eot_samples``, ``draws``, ``out``, ``name``,
    ``device``, ``batch_size``, ``limit``, ``seed``, ``weights``, ``data_root``, ``split``, ``gallery``,
    ``overwrite``, ``progress``, ``report``, ``threads``, ``model_name``, ``fold_bn``, ``channels_last``,
    ``compile``, ``amp`` ('bf16'), ``profile``. An existing run directory with the same
    ``RunConfig.identity()`` resumes.
    """
    return run(RunConfig.build(model=model, data=data, suite=suite, **options))


def evaluate_defenses(
    defenses: str | list[Any],
    *,
    eot_samples: int | None = None,
    config: RunConfig | None = None,
    **options: Any,
) -> tuple[list[RunResult], Path | None]:
    """Evaluate each defense under the same suite and data, then write a side-by-side comparison (JSON,
    and an HTML report unless ``report=False``).

    ``defenses``: comma-separated names or a list of registered names, ``name:weights`` checkpoints,
    ``package.module:function`` factories, Defense objects or models (``evaluation.defended``). Each is
    passed to the runner as a Defense, which attacks it as deployed (``defenses.adaptive.adapt``).
    ``config`` (or ``options``, the fields of :class:`RunConfig`) is shared by every defense (its
    ``capabilities`` are added to each defense's own); its ``name`` names the comparison, each run is
    called ``<name>-<defense>``. Returns (list of RunResult, path of the comparison report).
    """
    base = config if config is not None else RunConfig.build(**options)
    if eot_samples is not None:
        base = base.replace(eot_samples=eot_samples)
    names = split_defenses(defenses)
    dev = resolve_device(base.device)
    data = base.data if isinstance(base.data, str) else "shapes"
    plan = plan_defenses(names, dataset=data, device=dev)
    say_plan(plan, data)
    stem = base.name or f"defenses-{safe_name(base.data_name)}"
    done: dict[int, tuple[Defense, RunConfig, RunResult]] = {}
    # the ready ones first, then each to train as soon as it is trained: none waits for all the training
    for k, i in enumerate(sorted(range(len(plan)), key=lambda i: plan[i].train), 1):
        log.info("defense %d of %d: %s%s", k, len(plan), plan[i].name,
                 f" (training first, about {about(plan[i].seconds)})" if plan[i].train else "")  # fmt: skip
        d = resolve_defense(plan[i].spec, dataset=data, device=dev, progress=base.progress)
        c = base.replace(model=d, model_name=d.name, name=f"{stem}-{safe_name(d.name)}", device=dev)
        done[i] = (d, c, run(c))
    loaded, configs, results = (list(t) for t in zip(*(done[i] for i in range(len(plan))), strict=True))
    rows = [
        r.summary
        | {
            "defense": d.name,
            "capabilities": c.declared.as_dict() if c.declared else None,
            "training_cost": d.info.get("cost"),
            "published": d.info.get("published"),
        }
        for r, d, c in zip(results, loaded, configs, strict=True)
    ]
    out_dir = Path(base.out)
    atomic_write(
        out_dir / f"{safe_name(stem)}-comparison.json", json.dumps(compare(rows), indent=2, default=str)
    )
    if not base.report:
        return results, None
    target = out_dir / f"{safe_name(stem)}-comparison.html"
    return results, render_report([r.run_dir for r in results], target, title=f"defenses on {base.data_name}")


def say_plan(plan: list[Planned], data: str) -> None:
    """Before anything runs: which defenses must be trained first (not cached) and for about how long."""
    train = [p for p in plan if p.train]
    ready = [p.name for p in plan if not p.train]
    if not train:
        log.info("defenses: %s, all ready (cached or given); each is evaluated in turn", ", ".join(ready))
        return
    total = sum(p.seconds or 0.0 for p in train)
    log.info(
        "defenses: %d of %d must be trained on '%s' first (not cached), about %s in all on this machine: %s. "
        "Each is evaluated as soon as it is trained%s; --limit does not shorten training. Trained defenses "
        "are cached, so a rerun evaluates them at once",
        len(train), len(plan), data, about(total),
        "; ".join(f"{p.name} ({p.steps} steps, about {about(p.seconds or 0.0)})" for p in train),
        f", after the ready ones ({', '.join(ready)})" if ready else "",
    )  # fmt: skip


def catalogue() -> dict[str, list[str]]:
    """The names ``robustkit list`` shows: attacks, built-in suites, built-in datasets, dataset manifests,
    zoo models and defenses (every registry loaded)."""
    return {
        "attacks": ATTACKS.names(),
        "suites": builtin_suites(),
        "datasets": BUILTIN.names(),
        "manifests": manifest_names(),
        "models": ZOO.names(),
        "defenses": DEFENSES.names(),
    }
