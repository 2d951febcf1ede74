"""Read a run directory (config.yaml, results.sqlite, summary.json) into plain data for the report.

Nothing is recomputed from the model: everything comes from the stored results. ``summary.json`` is
used when present; a run that was interrupted before writing it is summarized from its store (and
marked unfinished in the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError
from ..evaluation.config import CONFIG_FILE
from ..evaluation.metrics import summarize
from ..evaluation.store import (
    STORE_FILE,
    ArtifactRecord,
    BatchRecord,
    Outcome,
    SampleRecord,
    Store,
    unpack_tensors,
)

TENSOR_BATCHES = 4


@dataclass
class Example:
    """A gallery sample: 8-bit clean and adversarial tensors, (C, H, W) or (C, T, H, W)."""

    idx: int
    clean: torch.Tensor
    adv: torch.Tensor


@dataclass
class Artifact:
    """One decoded artifact of one attack batch (``part`` > 0: a later piece of a batch split after
    running out of memory); ``size`` is how many samples that batch attacked."""

    batch: int
    key: str
    kind: str
    value: Any
    size: int
    part: int = 0


@dataclass
class Run:
    dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]
    attacks: list[dict[str, Any]]
    outcomes: dict[str, dict[int, Outcome]]
    samples: dict[int, SampleRecord]
    batches: list[BatchRecord]
    artifacts: dict[str, list[Artifact]]
    examples: dict[str, list[Example]]
    findings: list[dict[str, str]]
    finished: bool = True
    classes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> set[int]:
        """The samples classified correctly when clean."""
        return {i for i, s in self.samples.items() if s.correct}

    def class_name(self, label: int | None) -> str:
        if label is None:
            return "–"
        if 0 <= label < len(self.classes):
            return str(self.classes[label])
        return str(label)


def _attacked_per_batch(batches: list[BatchRecord], stage: str, rows: dict[int, Outcome]) -> dict[int, int]:
    """How many samples each batch of ``stage`` attacked (first index -> count)."""
    return {
        b.first_idx: sum(1 for i in b.indices if i in rows and rows[i].attacked) if b.indices else b.size
        for b in batches
        if b.stage == stage
    }


def _artifact(record: ArtifactRecord, sizes: dict[int, int]) -> Artifact | None:
    try:
        value = record.value()
    except (ValueError, KeyError, RuntimeError):
        return None  # an artifact the report cannot read is left out, not fatal
    return Artifact(batch=record.first_idx, key=record.key, kind=record.kind, value=value,
                    size=sizes.get(record.first_idx, 0), part=record.part)  # fmt: skip


def load_run(run_dir: str | Path, gallery: int = 8) -> Run:
    """Everything the report shows for one run directory; at most ``gallery`` examples per attack."""
    run_dir = Path(run_dir)
    store_path = run_dir / STORE_FILE
    if not store_path.is_file():
        raise InputError(f"{run_dir} is not a robustkit run directory ({STORE_FILE} expected)")
    config_path = run_dir / CONFIG_FILE
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    store = Store(store_path)
    try:
        meta = store.all_meta()
        classes = list((meta.get("run") or {}).get("classes") or [])
        summary_path = run_dir / "summary.json"
        summary = (
            json.loads(summary_path.read_text()) if summary_path.is_file() else summarize(store, classes)
        )
        attacks = store.attacks()
        batches = store.batches()
        outcomes: dict[str, dict[int, Outcome]] = {}
        artifacts: dict[str, list[Artifact]] = {}
        examples: dict[str, list[Example]] = {}
        for a in attacks:
            rows = {o.idx: o for o in store.outcomes(a["id"])}
            outcomes[a["name"]] = rows
            sizes = _attacked_per_batch(batches, a["name"], rows)
            decoded = (_artifact(r, sizes) for r in store.artifacts(a["id"], tensor_batches=TENSOR_BATCHES))
            artifacts[a["name"]] = [art for art in decoded if art is not None]
            shots = []
            for idx, blob in list(store.examples(a["id"]).items())[:gallery]:
                t = unpack_tensors(blob)
                if "clean" in t and "adv" in t:
                    shots.append(Example(idx=idx, clean=t["clean"], adv=t["adv"]))
            examples[a["name"]] = shots
        samples = {s.idx: s for s in store.samples()}
        findings = store.findings()
    finally:
        store.close()
    return Run(dir=run_dir, summary=summary, config=config, meta=meta, attacks=attacks, outcomes=outcomes,
               samples=samples, batches=batches, artifacts=artifacts, examples=examples, findings=findings,
               finished=meta.get("finished_at") is not None, classes=classes)  # fmt: skip
