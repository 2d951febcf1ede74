"""A run's results as a RobustBench model card: the JSON of a leaderboard entry
(``model_info/<dataset>/<threat_model>/<Name>.json`` in RobustBench's repository).

RobustBench's fields, in its order: ``link``, ``name`` (the paper's title), ``authors``, ``additional_data``,
``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps`` (``"8/255"`` for L-inf, ``"0.5"``
for L2), ``clean_acc`` and ``reported`` and ``autoattack_acc`` (percentages as strings with two decimals),
``footnote``, ``unreliable``. ``clean_acc`` and ``autoattack_acc`` come from the run: the clean accuracy and
the robust accuracy under the suite's AutoAttack entry (the worst over the defense's views); the threat model
and eps from that entry. What the run cannot know (the paper, its authors, the architecture's name) comes from
keyword arguments or stays null. ``unreliable`` is true when a sanity check of the run failed.
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write

log = logging.getLogger(__name__)

FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
    "unreliable",
)
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = {"linf": "Linf", "l2": "L2"}


def format_eps(eps: float, threat: str) -> str:
    """RobustBench's spelling of eps: a fraction of 255 for L-inf when it is one (``8/255``), else the number."""
    if threat == "Linf":
        k = Fraction(eps * 255).limit_denominator(1000)
        if k.denominator == 1 and abs(float(k) / 255 - eps) < 1e-9:
            return f"{k.numerator}/255"
    return f"{eps:g}"


def _percent(x: float) -> str:
    return f"{100 * x:.2f}"


def autoattack_rows(summary: dict[str, Any], eps: float | None = None) -> list[dict[str, Any]]:
    """The summary's AutoAttack rows at one eps (every view of it). ``eps`` picks one when the suite ran
    AutoAttack at several."""
    rows = [
        a for a in summary.get("attacks", []) if a.get("attack") == "autoattack" and a.get("eps") is not None
    ]
    if not rows:
        raise ConfigError(
            "a RobustBench model card reports AutoAttack's robust accuracy, and this run has no AutoAttack entry: "
            "evaluate with --suite autoattack-standard (or a suite with an autoattack attack)"
        )
    values = sorted({float(a["eps"]) for a in rows})
    if eps is None and len(values) > 1:
        raise ConfigError(f"the run has AutoAttack at several eps ({values}); pick one with eps=")
    target = values[0] if eps is None else eps
    chosen = [a for a in rows if abs(float(a["eps"]) - target) < 1e-9]
    if not chosen:
        raise ConfigError(f"the run has no AutoAttack entry at eps={eps}; it has {values}")
    return chosen


def model_card(summary: dict[str, Any], *, eps: float | None = None, **fields: Any) -> dict[str, Any]:
    """The RobustBench model-card dict of a run's ``summary``. ``fields`` fill or override RobustBench's
    fields (``name``, ``link``, ``authors``, ``venue``, ``architecture``, ``additional_data``,
    ``number_forward_passes``, ``reported``, ``footnote``, ``dataset``)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"model card: unknown field(s) {', '.join(unknown)}; RobustBench's are {', '.join(FIELDS)}"
        )
    rows = autoattack_rows(summary, eps)
    threat = THREATS.get(str(rows[0].get("norm", "")).lower())
    if threat is None:
        raise ConfigError(
            f"RobustBench's leaderboards are L-inf and L2; this AutoAttack ran in {rows[0].get('norm')}"
        )
    if not summary.get("complete", True):
        log.warning("model card: the run is incomplete; its figures cover only what was evaluated")
    n = summary.get("n_samples")
    card: dict[str, Any] = dict.fromkeys(FIELDS)
    card.update(
        name=summary.get("model"),
        additional_data=False,
        number_forward_passes=1,
        dataset=summary.get("data"),
        eps=format_eps(float(rows[0]["eps"]), threat),
        clean_acc=_percent(summary["clean_accuracy"]),
        autoattack_acc=_percent(min(float(a["robust_accuracy"]) for a in rows)),
        footnote=f"Evaluated with robustkit ({rows[0]['name']}) on {n} test samples.",
        unreliable=any(f.get("status") == "fail" for f in summary.get("findings", [])),
    )
    card.update(fields)
    if card["dataset"] not in DATASETS:
        log.warning("model card: RobustBench's leaderboards are %s; this run's data is '%s'", ", ".join(DATASETS),
                    card["dataset"])  # fmt: skip
    card["threat_model"] = (
        threat  # not a field of the JSON: where the file goes (model_info/<dataset>/<threat>/)
    )
    return card


def write_model_card(run: str | Path | dict[str, Any], path: str | Path, **fields: Any) -> Path:
    """Write the model card of ``run`` (a run directory, its ``summary.json``, or a summary dict) to ``path``
    as RobustBench's JSON (``eps=`` and ``fields`` as for :func:`model_card`); returns ``path``."""
    if isinstance(run, dict):
        summary = run
    else:
        file = Path(run) / "summary.json" if Path(run).is_dir() else Path(run)
        if not file.is_file():
            raise ConfigError(
                f"model card: {file} does not exist; expected a run directory or its summary.json"
            )
        summary = json.loads(file.read_text())
    card = model_card(summary, **fields)
    card.pop("threat_model")
    return atomic_write(Path(path), json.dumps(card, indent=2) + "\n")
