"""Read a run directory (summary.json, config.yaml, results.sqlite) into plain data for the templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..evaluate.store import Store, unpack_tensors


def load_run(run_dir: str | Path, gallery: int = 8) -> dict[str, Any]:
    run_dir = Path(run_dir)
    summary_path, store_path = run_dir / "summary.json", run_dir / "results.sqlite"
    if not summary_path.is_file() or not store_path.is_file():
        raise InputError(
            f"{run_dir} is not a finished robustkit run (summary.json and results.sqlite expected)"
        )
    summary = json.loads(summary_path.read_text())
    config = (
        yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    )
    store = Store(store_path)
    try:
        meta = {k: store.meta(k) for k in ("run", "provenance", "started_at", "finished_at", "elapsed")}
        examples: dict[str, list[dict[str, Any]]] = {}
        artifacts: dict[str, list[dict[str, Any]]] = {}
        outcomes = {}
        for a in store.attacks():
            rows = {r[0]: r for r in store.outcomes(a["id"])}
            outcomes[a["name"]] = rows
            shots = []
            for idx, blob in list(store.examples(a["id"]).items())[:gallery]:
                t = unpack_tensors(blob)
                r = rows.get(idx)
                shots.append(
                    {
                        "idx": idx,
                        "clean": t["clean"],
                        "adv": t["adv"],
                        "pred": r[4] if r else None,
                        "confidence": r[5] if r else None,
                        "robust": bool(r[3]) if r else None,
                    }
                )
            examples[a["name"]] = shots
            arts = []
            for first, key, kind, data in store.artifacts(a["id"]):
                value = next(iter(unpack_tensors(data).values())) if kind == "tensor" else json.loads(data)
                arts.append({"batch": first, "key": key, "kind": kind, "value": value})
            artifacts[a["name"]] = arts
        samples = {i: (y, p, c, f) for i, y, p, c, f in store.samples()}
        findings = store.findings()
    finally:
        store.close()
    return {
        "dir": str(run_dir),
        "summary": summary,
        "config": config,
        "meta": meta,
        "examples": examples,
        "artifacts": artifacts,
        "samples": samples,
        "findings": findings,
    }
