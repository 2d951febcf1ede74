"""Side-by-side comparison of several runs (models or defenses): one table and overlaid ε curves."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .charts import Chart, line_chart
from .curves import _norm_axis
from .load import Run
from .sections import header


def comparison(runs: list[Run]) -> dict[str, Any]:
    """Rows per run: identity, clean and worst-case robust accuracy, robust accuracy per attack name."""
    names: list[str] = []
    for r in runs:
        for a in r.summary.get("attacks") or []:
            if a["name"] not in names:
                names.append(a["name"])
    rows = []
    for k, r in enumerate(runs):
        h = header(r)
        per = {a["name"]: a["robust_accuracy"] for a in r.summary.get("attacks") or []}
        s = r.summary
        rows.append(
            {
                "anchor": f"r{k}",
                "name": h["name"],
                "model": h["model"],
                "defense": h["defense"],
                "data": h["data"],
                "suite": h["suite"],
                "n": s.get("n_samples"),
                "clean": s.get("clean_accuracy"),
                "robust": s.get("robust_accuracy"),
                "robust_ci": s.get("robust_accuracy_ci") or [None, None],
                "per_attack": [per.get(n) for n in names],
                "seconds": h["seconds"],
            }
        )
    counts = sorted({r["n"] for r in rows if r["n"] is not None})
    notes = []
    if len(counts) > 1:
        notes.append(
            f"The runs were evaluated on different numbers of samples ({', '.join(f'{c:,}' for c in counts)}): "
            "their accuracies come from different samples, and the smaller runs' figures are far less "
            "certain (see the 95% CI column). Compare runs of equal size (--limit) for a fair comparison."
        )
    best_robust = max((r["robust"] for r in rows if r["robust"] is not None), default=None)
    best_clean = max((r["clean"] for r in rows if r["clean"] is not None), default=None)
    return {
        "attacks": names,
        "rows": rows,
        "best_robust": best_robust,
        "best_clean": best_clean,
        "charts": _overlay(runs, [r["name"] for r in rows]),
        "notes": notes,
    }


def _overlay(runs: list[Run], labels: list[str]) -> list[Chart]:
    """Per norm: each run's worst-case robust accuracy at each ε (clean accuracy at ε = 0)."""
    per_norm: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(dict)
    seen: dict[str, int] = defaultdict(int)
    for r, label in zip(runs, labels, strict=True):
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label} ({seen[label]})"
        n = len(r.samples)
        if not n:
            continue
        correct = r.correct
        worst: dict[str, dict[float, set[int]]] = defaultdict(dict)
        for a in r.attacks:
            if a.get("eps") is None or not a.get("norm"):
                continue
            robust = {i for i, o in r.outcomes.get(a["name"], {}).items() if o.robust}
            cur = worst[a["norm"]].get(float(a["eps"]), set(correct))
            worst[a["norm"]][float(a["eps"])] = cur & robust
        for norm, pts in worst.items():
            _, scale = _norm_axis(norm)
            per_norm[norm][label] = [(0.0, len(correct) / n)] + [
                (e * scale, len(s) / n) for e, s in pts.items()
            ]
    charts = []
    for norm in sorted(per_norm):
        x_label, _ = _norm_axis(norm)
        chart = line_chart(
            per_norm[norm],
            title=f"Worst-case robust accuracy vs ε ({norm})",
            x_label=x_label,
            y_label="robust accuracy",
            gaps=True,
        )
        if chart is not None:
            charts.append(chart)
    return charts
