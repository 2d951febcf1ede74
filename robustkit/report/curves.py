"""Accuracy-vs-ε curves per norm and EOT robustness curves, as :class:`~.charts.Chart` data.

ε curves come from the stored outcomes: per attack family (registry key) the robust accuracy at each
ε, and the worst case over every attack at that ε (in the worst view of a defense attacked in several); ε = 0 is the clean accuracy. EOT curves come from
the ``eot_curve`` artifacts physical attacks store per batch (success rate on a fixed rotation x scale
x brightness grid), averaged over batches weighted by how many samples each batch attacked.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..evaluation.metrics import view_of
from .charts import Chart, line_chart
from .load import Run

EOT_AXES = {
    "rotation": ("rotation (degrees)", lambda v: f"{v:g}°"),
    "scale": ("scale (×)", lambda v: f"{v:g}×"),
    "brightness": ("brightness shift", lambda v: f"{v:+g}" if v else "0"),
}
RATE_KEYS = ("success_rate", "accuracy", "robust_accuracy")


def _norm_axis(norm: str) -> tuple[str, float]:
    if norm.lower() in ("linf", "inf"):
        return "ε (L∞, in 1/255)", 255.0
    return f"ε ({norm})", 1.0


def eps_curves(run: Run) -> list[Chart]:
    """One chart per norm with at least one ε-bounded attack."""
    n = len(run.samples)
    if not n:
        return []
    clean = run.summary.get("clean_accuracy")
    fams: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    # per (norm, eps, view): each sample's robust accuracy (1 / 0, or the fraction of fresh draws of a
    # stochastic model), the lowest over the view's attacks and never above its clean one
    per_view: dict[tuple[str, float, str], dict[int, float]] = {}
    for a in run.attacks:
        if a.get("eps") is None or not a.get("norm"):
            continue
        eps = float(a["eps"])
        outs = run.outcomes.get(a["name"], {})
        score = {i: o.score for i, o in outs.items()}
        fam = fams[a["norm"]][a["attack"]]
        fam[eps] = min(fam.get(eps, 1.0), sum(score.values()) / n)
        view = per_view.setdefault((a["norm"], eps, view_of(a)), {i: s.score for i, s in run.samples.items()})
        for i in view:
            view[i] = min(view[i], score.get(i, 0.0))
    worst: dict[str, dict[float, float]] = defaultdict(dict)  # the worst view's robust accuracy
    for (norm, eps, _view), scores in per_view.items():
        worst[norm][eps] = min(worst[norm].get(eps, 1.0), sum(scores.values()) / n)
    charts = []
    for norm in sorted(fams):
        label, scale = _norm_axis(norm)
        series: dict[str, list[tuple[float, float]]] = {}
        for fam, pts in fams[norm].items():
            series[fam] = ([(0.0, clean)] if clean is not None else []) + [
                (e * scale, v) for e, v in pts.items()
            ]
        if len(fams[norm]) > 1:
            series["worst case"] = ([(0.0, clean)] if clean is not None else []) + [
                (e * scale, v) for e, v in worst[norm].items()
            ]
        chart = line_chart(
            series, title=f"Robust accuracy vs ε ({norm})", x_label=label, y_label="robust accuracy"
        )
        if chart is not None:
            charts.append(chart)
    return charts


def _axes_of(value: Any) -> dict[str, tuple[str, list[float], list[float]]]:
    """Axis -> (rate key, xs, ys) from one stored curve, in either of the shapes attacks store:
    ``{axis: {values: [...], success_rate: [...]}}`` or ``{axis: [...], accuracy: [...]}``."""
    out: dict[str, tuple[str, list[float], list[float]]] = {}
    if not isinstance(value, dict):
        return out
    for axis, v in value.items():
        if isinstance(v, dict) and isinstance(v.get("values"), list):
            key = next((k for k in RATE_KEYS if isinstance(v.get(k), list)), None)
            if key and len(v[key]) == len(v["values"]):
                out[axis] = (key, [float(x) for x in v["values"]], [float(y) for y in v[key]])
    key = next((k for k in RATE_KEYS if isinstance(value.get(k), list)), None)
    if key:
        for axis, v in value.items():
            if (
                axis not in RATE_KEYS
                and isinstance(v, list)
                and len(v) == len(value[key])
                and axis not in out
            ):
                try:
                    out[axis] = (key, [float(x) for x in v], [float(y) for y in value[key]])
                except (TypeError, ValueError):
                    continue
    return out


def eot_curves(run: Run) -> list[dict[str, Any]]:
    """Per grid axis (rotation, scale, brightness ...): a chart with one series per physical attack."""
    acc: dict[tuple[str, str], dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for a in run.attacks:
        for art in run.artifacts.get(a["name"], []):
            if art.key != "eot_curve" and not art.key.endswith("_curve"):
                continue
            weight = max(1, art.size)
            for axis, (key, xs, ys) in _axes_of(art.value).items():
                pts = acc[(axis, key)][a["name"]]
                for x, y in zip(xs, ys, strict=True):
                    s = pts.setdefault(x, [0.0, 0.0])
                    s[0] += y * weight
                    s[1] += weight
    out = []
    order = list(EOT_AXES)
    for axis, key in sorted(acc, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[0], k[1])):
        series = {
            name: [(x, s / w) for x, (s, w) in pts.items() if w] for name, pts in acc[(axis, key)].items()
        }
        x_label, fmt = EOT_AXES.get(axis, (axis, lambda v: f"{v:g}"))
        y_label = "attack success rate" if key == "success_rate" else key.replace("_", " ")
        chart = line_chart(
            series,
            title=f"{y_label.capitalize()} vs {axis}",
            x_label=x_label,
            y_label=y_label,
            x_format=fmt,
            tip_format=fmt,
        )
        if chart is not None:
            out.append({"axis": axis, "metric": key, "chart": chart})
    return out
