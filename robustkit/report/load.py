"""Read a run directory (config.yaml, results.sqlite, summary.json) into plain data for the report.

Nothing is recomputed from the model: everything comes from the stored results. ``summary.json`` is
used when present; a run that was interrupted before writing it is summarized from its store (and
marked unfinished in the report).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError
from ..evaluation.metrics import summarize
from ..evaluation.store import Store, unpack_tensors

TENSOR_BATCHES = 4


@dataclass
class Outcome:
    """One sample under one attack, as stored."""

    idx: int
    attacked: bool
    claimed: bool
    robust: bool
    pred: int
    confidence: float
    linf: float | None
    l2: float | None
    metrics: dict[str, float]


@dataclass
class Example:
    """A gallery sample: 8-bit clean and adversarial tensors, (C, H, W) or (C, T, H, W)."""

    idx: int
    clean: torch.Tensor
    adv: torch.Tensor


@dataclass
class Artifact:
    """One artifact of one attack batch; ``size`` is how many samples that batch attacked."""

    batch: int
    key: str
    kind: str
    value: Any
    size: int


@dataclass
class Run:
    dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]
    attacks: list[dict[str, Any]]
    outcomes: dict[str, dict[int, Outcome]]
    samples: dict[int, tuple[int, int, bool, float]]
    batches: list[dict[str, Any]]
    artifacts: dict[str, list[Artifact]]
    examples: dict[str, list[Example]]
    findings: list[dict[str, str]]
    finished: bool = True
    classes: list[str] = field(default_factory=list)

    def class_name(self, label: int | None) -> str:
        if label is None:
            return "–"
        if 0 <= label < len(self.classes):
            return str(self.classes[label])
        return str(label)


def _meta(store: Store) -> dict[str, Any]:
    rows = store.db.execute("SELECT key, value FROM meta").fetchall()
    out = {}
    for key, value in rows:
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _batches(store: Store) -> list[dict[str, Any]]:
    out = []
    for stage, first, size, seconds, counters, indices in store.batches():
        out.append(
            {
                "stage": stage,
                "first": first,
                "size": size,
                "seconds": float(seconds or 0.0),
                "counters": json.loads(counters or "{}"),
                "indices": json.loads(indices or "[]"),
            }
        )
    return out


def _attacked_per_batch(
    batches: list[dict[str, Any]], stage: str, rows: dict[int, Outcome]
) -> dict[int, int]:
    """How many samples each batch of ``stage`` attacked (first index -> count)."""
    out = {}
    for b in batches:
        if b["stage"] != stage:
            continue
        idx = b["indices"]
        out[b["first"]] = sum(1 for i in idx if i in rows and rows[i].attacked) if idx else int(b["size"])
    return out


def _artifacts(store: Store, attack_id: int, sizes: dict[int, int]) -> list[Artifact]:
    """JSON artifacts of every batch (curves and cascades are aggregated over batches); tensors of
    the first ``TENSOR_BATCHES`` batches per key only (the gallery shows a few, and per-sample
    tensors of a large run would not fit in memory)."""
    rows = store.db.execute(
        "SELECT first_idx, key, kind FROM artifacts WHERE attack_id = ? ORDER BY first_idx, key", (attack_id,)
    ).fetchall()
    seen: dict[str, int] = defaultdict(int)
    out = []
    for first, key, kind in rows:
        if kind == "tensor":
            seen[key] += 1
            if seen[key] > TENSOR_BATCHES:
                continue
        (data,) = store.db.execute(
            "SELECT data FROM artifacts WHERE attack_id = ? AND first_idx = ? AND key = ?",
            (attack_id, first, key),
        ).fetchone()
        try:
            value = unpack_tensors(data)[key] if kind == "tensor" else json.loads(data)
        except (ValueError, KeyError, RuntimeError):
            continue  # an artifact the report cannot read is left out, not fatal
        out.append(Artifact(batch=first, key=key, kind=kind, value=value, size=sizes.get(first, 0)))
    return out


def load_run(run_dir: str | Path, gallery: int = 8) -> Run:
    """Everything the report shows for one run directory; at most ``gallery`` examples per attack."""
    run_dir = Path(run_dir)
    store_path = run_dir / "results.sqlite"
    if not store_path.is_file():
        raise InputError(f"{run_dir} is not a robustkit run directory (results.sqlite expected)")
    config_path = run_dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    store = Store(store_path)
    try:
        meta = _meta(store)
        classes = list((meta.get("run") or {}).get("classes") or [])
        summary_path = run_dir / "summary.json"
        summary = (
            json.loads(summary_path.read_text()) if summary_path.is_file() else summarize(store, classes)
        )
        attacks = store.attacks()
        batches = _batches(store)
        outcomes: dict[str, dict[int, Outcome]] = {}
        artifacts: dict[str, list[Artifact]] = {}
        examples: dict[str, list[Example]] = {}
        for a in attacks:
            rows = {}
            for idx, attacked, claimed, robust, pred, conf, linf, l2, metrics in store.outcomes(a["id"]):
                rows[idx] = Outcome(
                    idx=idx,
                    attacked=bool(attacked),
                    claimed=bool(claimed),
                    robust=bool(robust),
                    pred=int(pred),
                    confidence=float(conf),
                    linf=linf,
                    l2=l2,
                    metrics=json.loads(metrics) if metrics else {},
                )
            outcomes[a["name"]] = rows
            sizes = _attacked_per_batch(batches, a["name"], rows)
            artifacts[a["name"]] = _artifacts(store, a["id"], sizes)
            shots = []
            for idx, blob in list(store.examples(a["id"]).items())[:gallery]:
                t = unpack_tensors(blob)
                if "clean" in t and "adv" in t:
                    shots.append(Example(idx=idx, clean=t["clean"], adv=t["adv"]))
            examples[a["name"]] = shots
        samples = {i: (y, p, bool(c), f) for i, y, p, c, f in store.samples()}
        findings = store.findings()
    finally:
        store.close()
    return Run(
        dir=run_dir,
        summary=summary,
        config=config,
        meta=meta,
        attacks=attacks,
        outcomes=outcomes,
        samples=samples,
        batches=batches,
        artifacts=artifacts,
        examples=examples,
        findings=findings,
        finished=meta.get("finished_at") is not None,
        classes=classes,
    )
