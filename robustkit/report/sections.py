"""View models of the report's tabular sections, built from a loaded :class:`~.load.Run`.

Each function returns plain data (numbers and strings); the templates format and escape it.
Aggregates such as the cascade are counted from the stored per-sample outcomes, never recomputed
by running anything.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import yaml

from ..evaluation.metrics import wilson
from .load import Run

# Per-sample metrics that are labels or indices, not quantities to average.
CATEGORICAL = {"target", "broken_by"}
PASSING = {"pass", "ok", "skip"}
STATUS_ORDER = {"fail": 0, "error": 0, "warn": 1, "info": 2, "pass": 3, "ok": 3, "skip": 4}


def eps_label(eps: float | None, norm: str | None) -> str:
    """ε as a reader expects it: k/255 for L-inf when it is a whole number of 8-bit levels."""
    if eps is None:
        return "–"
    if norm in (None, "Linf", "linf", "inf") and eps > 0:
        scaled = eps * 255
        if abs(scaled - round(scaled)) < 1e-6:
            return f"{round(scaled)}/255"
    return f"{eps:.4g}"


def header(run: Run) -> dict[str, Any]:
    meta, s = run.meta, run.summary
    info = meta.get("run") or {}
    model = info.get("model") or {}
    if isinstance(model, dict):
        model_name = str(model.get("name") or s.get("model") or "–")
        model_kind = model.get("kind")
    else:
        model_name, model_kind = str(model), None
    defense = meta.get("defense") or {}
    prov = meta.get("provenance") or {}
    return {
        "name": str(info.get("name") or s.get("run") or run.dir.name),
        "model": model_name,
        "model_kind": model_kind,
        "weights": model.get("weights") if isinstance(model, dict) else None,
        "defense": str(defense.get("name")) if isinstance(defense, dict) and defense.get("name") else None,
        "data": str(info.get("data") or s.get("data") or "–"),
        "split": info.get("split"),
        "suite": str(info.get("suite") or s.get("suite") or "–"),
        "started": meta.get("started_at"),
        "finished": meta.get("finished_at"),
        "seconds": meta.get("elapsed", s.get("seconds")),
        "device": prov.get("device") or s.get("device"),
        "seed": info.get("seed", s.get("seed")),
        "n": s.get("n_samples", len(run.samples)),
        "complete": run.finished,
        "normalization": _normalization(s.get("normalization")),
        "input": str((s.get("input") or {}).get("line", "")).removeprefix("input ") or None,
    }


def _normalization(norm: Any) -> str | None:
    """The input normalisation the run applied (``summary["normalization"]``), in words."""
    if not isinstance(norm, dict):
        return None
    mean, std, source = norm.get("mean"), norm.get("std"), norm.get("source")
    said = "none" if mean is None else f"mean {_floats(mean)}, std {_floats(std)}"
    return f"{said} ({source})" if source else said


def _floats(values: Any) -> str:
    return (
        "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
        if isinstance(values, list | tuple)
        else str(values)
    )


def summary(run: Run) -> dict[str, Any]:
    s = run.summary
    attacks = s.get("attacks") or []
    strongest = min(attacks, key=lambda a: a["robust_accuracy"], default=None)
    views = s.get("views") or []
    return {
        "worst_view": s.get("worst_view") if len(views) > 1 else None,
        "draws": (run.meta.get("defense") or {}).get("draws") if "robust_accuracy_every_draw" in s else None,
        "robust_every_draw": s.get("robust_accuracy_every_draw"),
        "clean_every_draw": s.get("clean_accuracy_every_draw"),
        "n": s.get("n_samples", 0),
        "clean": s.get("clean_accuracy"),
        "clean_ci": s.get("clean_accuracy_ci") or [None, None],
        "robust": s.get("robust_accuracy"),
        "robust_ci": s.get("robust_accuracy_ci") or [None, None],
        "attacks": len(attacks),
        "strongest": strongest["name"] if strongest else None,
        "strongest_acc": strongest["robust_accuracy"] if strongest else None,
        "incomplete": [a["name"] for a in attacks if not a.get("complete", True)],
        "at": budget(attacks),
    }


NORM_NAMES = {"Linf": "L∞", "L2": "L2", "L1": "L1", "L0": "L0"}


def budget(attacks: list[dict[str, Any]]) -> str:
    """At which ε the worst case holds, for the headline: the largest ε per norm, and the attacks without
    one (physical): 'ε ≤ 8/255 (L∞), ≤ 0.5 (L2); and patch, roa'."""
    largest: dict[str, float] = {}
    sizes: dict[str, set[float]] = defaultdict(set)
    unbounded: list[str] = []
    for a in attacks:
        eps, norm = a.get("eps"), a.get("norm")
        if eps is None or not norm:
            key = str(a.get("attack") or a.get("name"))
            if key not in unbounded:
                unbounded.append(key)
            continue
        largest[norm] = max(largest.get(norm, 0.0), float(eps))
        sizes[norm].add(float(eps))
    parts = [
        f"{'≤ ' if len(sizes[n]) > 1 else ''}{eps_label(e, n)} ({NORM_NAMES.get(n, n)})"
        for n, e in sorted(largest.items(), key=lambda item: (item[0] != "Linf", item[0]))
    ]
    text = f"ε {', '.join(parts)}" if parts else ""
    if unbounded:
        text += f"{'; and ' if text else ''}{', '.join(unbounded)}"
    return text


def _group_key(a: dict[str, Any]) -> tuple:
    eps = a.get("eps")
    return (a.get("norm") or "", -1.0 if eps is None else float(eps))


def _stage_rows(run: Run, attack: dict[str, Any]) -> list[dict[str, Any]]:
    """The attack's own inner cascade (AutoAttack): ``artifacts['cascade']`` summed over batches."""
    stages: dict[str, dict[str, Any]] = {}
    rows = run.outcomes.get(attack["name"], {})
    for art in run.artifacts.get(attack["name"], []):
        if art.key != "cascade" or not isinstance(art.value, list):
            continue
        for k, st in enumerate(art.value):
            if not isinstance(st, dict):
                continue
            name = str(st.get("attack", f"stage {k + 1}"))
            row = stages.setdefault(name, {"attack": name, "robust": 0.0, "seconds": 0.0, "counters": {}})
            after = st.get("robust_after")
            if isinstance(after, bool) or after is None:
                pass
            elif isinstance(after, int) or (isinstance(after, float) and after > 1):
                row["robust"] += float(after)
            elif isinstance(after, float):
                row["robust"] += after * art.size
            row["seconds"] += float(st.get("seconds") or 0.0)
            for ck, cv in (st.get("counters") or {}).items():
                if isinstance(cv, int | float):
                    row["counters"][ck] = row["counters"].get(ck, 0) + cv
    if not stages:
        return []
    broken_by: dict[int, int] = defaultdict(int)
    for o in rows.values():
        b = o.metrics.get("broken_by")
        if b is not None and math.isfinite(b) and b >= 0:
            broken_by[int(b)] += 1
    n = len(run.samples) or 1
    out = []
    for k, row in enumerate(stages.values()):
        row["robust_accuracy"] = row["robust"] / n
        row["broke"] = broken_by.get(k) if broken_by else None
        out.append(row)
    return out


def cascade(run: Run) -> list[dict[str, Any]]:
    """AutoAttack-style table per threat model (norm, ε): each attack alone and the robust accuracy
    after it and every attack before it, the samples it newly broke, its time and cost."""
    by_name = {a["name"]: a for a in run.summary.get("attacks") or []}
    n = len(run.samples)
    correct = run.correct
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for a in run.attacks:
        groups[_group_key(a)].append(a)
    out = []
    for key in sorted(groups, key=lambda k: (k[1] < 0, k[0], k[1])):  # bounded first, by norm and ε
        alive = set(correct)
        rows = []
        for a in groups[key]:
            outs = run.outcomes.get(a["name"], {})
            robust = {i for i, o in outs.items() if o.robust}
            before = len(alive)
            alive &= robust
            s = by_name.get(a["name"], {})
            lo, hi = wilson(len(alive), n)
            attacked = sum(1 for o in outs.values() if o.attacked)
            rows.append(
                {
                    "name": a["name"],
                    "attack": a["attack"],
                    "kind": a.get("kind") or "image",
                    "robust": s.get("robust_accuracy", len(robust) / n if n else 0.0),
                    "after": len(alive) / n if n else 0.0,
                    "after_ci": (lo, hi),
                    "newly_broken": before - len(alive),
                    "attacked": attacked,
                    "success_rate": s.get("success_rate"),
                    "unconfirmed": s.get("claimed_not_confirmed", 0),
                    "seconds": s.get("seconds"),
                    "counters": s.get("counters") or {},
                    "complete": s.get("complete", True),
                    "stages": _stage_rows(run, a),
                }
            )
        norm, eps = key
        out.append(
            {
                "norm": norm or None,
                "eps": None if eps < 0 else eps,
                "label": f"{norm} ε = {eps_label(eps, norm)}".strip()
                if eps >= 0
                else (f"{norm}, no ε bound" if norm else "unbounded (physical, patch, …)"),
                "rows": rows,
                "robust": rows[-1]["after"] if rows else None,
            }
        )
    return out


def attack_metrics(run: Run) -> dict[str, Any]:
    """Mean perturbation size of successful attacks and the mean of every per-sample metric."""
    names: list[str] = []
    rows = []
    for a in run.attacks:
        outs = [o for o in run.outcomes.get(a["name"], {}).values() if o.attacked]
        broken = [o for o in outs if not o.robust]
        sums: dict[str, list[float]] = defaultdict(list)
        for o in outs:
            for k, v in o.metrics.items():
                if k not in CATEGORICAL and isinstance(v, int | float) and math.isfinite(v):
                    sums[k].append(float(v))
        for k in sums:
            if k not in names:
                names.append(k)
        linf = [o.linf for o in broken if o.linf is not None]
        l2 = [o.l2 for o in broken if o.l2 is not None]
        rows.append(
            {
                "name": a["name"],
                "linf": sum(linf) / len(linf) * 255 if linf else None,
                "l2": sum(l2) / len(l2) if l2 else None,
                "metrics": {k: sum(v) / len(v) for k, v in sums.items()},
            }
        )
    return {"names": names, "rows": rows}


def per_class(run: Run) -> list[dict[str, Any]]:
    out = []
    for c in run.summary.get("per_class") or []:
        n = int(c["n"])
        robust = float(c["robust_accuracy"])
        lo, hi = wilson(round(robust * n), n)
        name = run.class_name(c.get("label")) if run.classes else str(c.get("name", c.get("label")))
        out.append(
            {
                "name": name,
                "n": n,
                "clean": c["clean_accuracy"],
                "robust": robust,
                "ci": (lo, hi),
            }
        )
    return out


def timing(run: Run) -> dict[str, Any]:
    stages: dict[str, dict[str, Any]] = {}
    for b in run.batches:
        st = stages.setdefault(b.stage, {"stage": b.stage, "seconds": 0.0, "samples": 0, "counters": {}})
        st["seconds"] += b.seconds
        if b.first_idx >= 0:
            st["samples"] += b.size
        for k, v in b.counters.items():
            if isinstance(v, int | float):
                st["counters"][k] = st["counters"].get(k, 0) + v
    order = ["clean"] + [a["name"] for a in run.attacks]
    rows = [stages[s] for s in order if s in stages] + [v for k, v in stages.items() if k not in order]
    top = max((r["seconds"] for r in rows), default=0.0) or 1.0
    for r in rows:
        r["share"] = r["seconds"] / top
        r["rate"] = r["samples"] / r["seconds"] if r["seconds"] > 0 else None
    total = run.meta.get("elapsed")
    return {"rows": rows, "total": total, "measured": sum(r["seconds"] for r in rows)}


def findings(run: Run) -> dict[str, Any]:
    rows = sorted(run.findings, key=lambda f: (STATUS_ORDER.get(str(f["status"]).lower(), 5), f["name"]))
    # a passing check needs nothing done: its advice (what a failure would mean) stays out of the table
    rows = [f | {"todo": f["advice"] if str(f["status"]).lower() not in PASSING else ""} for f in rows]
    counts: dict[str, int] = {}
    for f in rows:  # already in severity order, so the counts are too
        key = str(f["status"]).lower()
        counts[key] = counts.get(key, 0) + 1
    return {"rows": rows, "counts": list(counts.items())}


# what each view of an adapted defense means (``robustkit.defenses.adaptive``)
VIEW_MEANING = {
    "white-box": "the run's batches, only the clean-correct samples attacked",
    "whole-batch": "the deployed batches attacked whole by one attacker; misclassified samples carried along",
    "one-at-a-time": "each sample attacked and judged alone (batches of one)",
    "among-clean": "each sample attacked alone among its clean batch mates",
}


def masking_verdict(summary: dict[str, Any]) -> str:
    """One plain sentence on gradient masking from a run's summary: the transfer-vs-white-box finding
    (transfer from a source beating the white-box views), and the other masking findings."""
    found = {f["name"]: f for f in summary.get("findings") or []}
    views = {v["view"]: v for v in summary.get("views") or []}
    transfer = found.get("transfer-vs-white-box")
    other = [n for n in ("gradient-health", "black-box-vs-white-box", "unbounded-eps")
             if (found.get(n) or {}).get("status") == "fail"]  # fmt: skip
    text = ""
    if transfer is not None and transfer["status"] == "fail":
        text = (f"Transfer is stronger than the white-box attack ({transfer['evidence']}); the reported robust "
                "accuracy is the worst view, the transfer views included.")  # fmt: skip
    elif transfer is not None:
        sources = ", ".join(v.split(":", 1)[1] for v in views if v.startswith("transfer:"))
        text = f"The white-box attack is at least as strong as transfer from {sources or 'the sources'}"
        text += "." if other else ": no sign of gradient masking."
    if other:
        text += (" " if text else "") + f"Signs of gradient masking: {', '.join(other)} failed."
    return text or "No transfer view was run; no other finding shows gradient masking."


def views(run: Run) -> dict[str, Any]:
    """Robust accuracy in each view of the defense (the robust accuracy is the worst), with what each
    view means and the masking verdict (``single``: only the white-box view was run)."""
    s = run.summary
    rows = s.get("views") or []
    worst = s.get("worst_view") if len(rows) > 1 else None
    out = []
    for v in rows:
        name = str(v["view"])
        source = name.split(":", 1)[1] if name.startswith("transfer:") else None
        meaning = (f"gradients from {source}, success judged on the defense" if source
                   else VIEW_MEANING.get(name, ""))  # fmt: skip
        out.append({"view": name, "meaning": meaning, "robust": v.get("robust_accuracy"),
                    "ci": v.get("robust_accuracy_ci") or [None, None],
                    "every_draw": v.get("robust_accuracy_every_draw"), "worst": name == worst})  # fmt: skip
    return {
        "rows": out,
        "worst": worst,
        "single": len(rows) <= 1,
        "stochastic": "robust_accuracy_every_draw" in s,
        "verdict": masking_verdict(s),
    }


def defense(run: Run) -> dict[str, Any] | None:
    d = run.meta.get("defense")
    if not isinstance(d, dict):
        return None
    caps = d.get("capabilities") or {}
    honored = d.get("how_honored") or []
    if isinstance(honored, str | dict):
        honored = [honored]
    items = []
    for h in honored:
        if isinstance(h, dict):
            items.append("; ".join(f"{k}: {v}" for k, v in h.items()))
        else:
            items.append(str(h))
    nd = caps.get("non_differentiable") or []
    if isinstance(nd, str):
        nd = [nd]
    info = d.get("info") if isinstance(d.get("info"), dict) else {}
    prepared = info.get("prepared") if isinstance(info.get("prepared"), dict) else {}
    departures = prepared.get("departures") or []
    return {
        "name": str(d.get("name", "–")),
        "paper": str(info["paper"]) if info.get("paper") else None,
        "departures": [str(x) for x in departures] if isinstance(departures, list | tuple) else [],
        "stochastic": caps.get("stochastic"),
        "batch_dependent": caps.get("batch_dependent"),
        "non_differentiable": [str(x) for x in nd],
        "honored": items,
        "detected": [_treated(str(line)) for line in d.get("detected") or []],
        "extra": {
            str(k): v for k, v in d.items() if k not in ("name", "capabilities", "how_honored", "detected")
        },
    }


def _treated(line: str) -> str:
    """A detected capability as the report says it: 'BatchNorm uses batch statistics in …: treated as
    batch-dependent'."""
    capability, sep, why = line.partition(": ")
    return f"{why}: treated as {capability}" if sep else line


def _plain(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def provenance(run: Run) -> dict[str, Any]:
    prov = dict(run.meta.get("provenance") or {})
    versions = prov.pop("versions", {}) or {}
    info = run.meta.get("run") or {}
    rows = [
        ("seed", info.get("seed")),
        ("started", run.meta.get("started_at")),
        ("finished", run.meta.get("finished_at") or "not finished"),
        ("run directory", run.dir.name),
    ]
    rows += [(str(k), v) for k, v in prov.items()]
    for k in ("world_size", "limit", "split"):
        if info.get(k) is not None:
            rows.append((k, info.get(k)))
    return {
        "rows": [(k, _plain(v)) for k, v in rows],
        "versions": [(str(k), "–" if v is None else str(v)) for k, v in versions.items()],
        "config": yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True) if run.config else "",
    }
