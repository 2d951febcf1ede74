"""Render one or several runs into a single self-contained HTML file (Jinja2 with autoescaping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..evaluate.files import atomic_write
from .images import amplified, line_chart_svg, png_data_uri
from .load import load_run

_env = Environment(
    loader=PackageLoader("robustkit.report", "templates"), autoescape=select_autoescape(["html", "j2"])
)
_env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
_env.filters["secs"] = lambda v: "–" if v is None else (f"{v:.2f} s" if v < 120 else f"{v / 60:.1f} min")


def _eps_label(eps: float | None) -> str:
    if eps is None:
        return "–"
    scaled = eps * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:.4g}"


_env.filters["eps"] = _eps_label


def _gallery(run: dict[str, Any], classes: list[str]) -> list[dict[str, Any]]:
    def cname(i):
        return classes[i] if i is not None and 0 <= i < len(classes) else str(i)

    out = []
    for attack, shots in run["examples"].items():
        items = []
        for s in shots:
            if s["clean"].ndim != 3:
                continue  # video clips are rendered by the animation section
            y, clean_pred, _, clean_conf = run["samples"].get(s["idx"], (None, None, None, None))
            items.append(
                {
                    "idx": s["idx"],
                    "label": cname(y),
                    "clean_pred": cname(clean_pred),
                    "clean_conf": clean_conf,
                    "adv_pred": cname(s["pred"]),
                    "adv_conf": s["confidence"],
                    "robust": s["robust"],
                    "clean": png_data_uri(s["clean"]),
                    "adv": png_data_uri(s["adv"]),
                    "diff": png_data_uri(amplified(s["clean"], s["adv"])),
                }
            )
        if items:
            out.append({"attack": attack, "shots": items})
    return out


def _view(run: dict[str, Any]) -> dict[str, Any]:
    s = run["summary"]
    classes = (run["meta"].get("run") or {}).get("classes") or []
    curves = {
        k: [(p["eps"], p["robust_accuracy"]) for p in v] for k, v in s.get("curves", {}).items() if len(v) > 1
    }
    return {
        "summary": s,
        "config": run["config"],
        "meta": run["meta"],
        "findings": run["findings"],
        "gallery": _gallery(run, classes),
        "curve_svg": line_chart_svg(curves, "ε (×1/255)", "robust accuracy", xscale=255) if curves else None,
    }


def render_report(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Render the report for one run, or a side-by-side comparison of several, to ``out``."""
    runs = [_view(load_run(d)) for d in run_dirs]
    html = _env.get_template("report.html.j2").render(
        runs=runs,
        title=title
        or (runs[0]["summary"].get("run", "robustkit run") if len(runs) == 1 else "robustkit comparison"),
    )
    return atomic_write(out, html)
