"""Small line charts as data for an inline SVG template (real ``<text>``, autoescaped labels).

The geometry is computed here; ``templates/_macros.html.j2`` draws it. Labels are never formatted into
markup in Python, so every user-controlled string (attack names, class names) goes through Jinja2's
autoescaping. Colours follow the Okabe-Ito palette and every series also has its own dash pattern and
marker, so the charts stay readable in grayscale print.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D1F")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 2", "1 2", "10 4", "3 3 1 3")
MARKERS = ("circle", "square", "diamond", "triangle")

WIDTH, HEIGHT = 460, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 12, 44


@dataclass
class Point:
    x: float
    y: float
    tip: str


@dataclass
class Series:
    label: str
    color: str
    dash: str
    marker: str
    path: str
    points: list[Point]


@dataclass
class Tick:
    pos: float
    label: str


@dataclass
class Chart:
    """Everything the SVG macro needs; coordinates are in the viewBox (``width`` x ``height``)."""

    title: str
    x_label: str
    y_label: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    series: list[Series] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-6:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi - step * 1e-6:
        ticks.append(round(v, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str = "accuracy",
    y_range: tuple[float, float] = (0.0, 1.0),
    y_percent: bool = True,
    x_format: Callable[[float], str] = _fmt,
    tip_format: Callable[[float], str] | None = None,
    gaps: bool = False,
) -> Chart | None:
    """A chart of several series of (x, y) points; ``None`` when there is nothing to draw.

    ``gaps``: a series' line does not join two of its points across an x that another series measured
    and it did not (its marker alone shows where it was measured), so no line suggests a value that
    was never measured."""
    data = {k: sorted((float(x), float(y)) for x, y in pts if _finite(x, y)) for k, pts in series.items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    xs = [x for pts in data.values() for x, _ in pts]
    x_ticks = nice_ticks(min(xs), max(xs))
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_range
    if y_range == (0.0, 1.0):
        y_vals = [0.0, 0.25, 0.5, 0.75, 1.0]
    else:
        ys = [y for pts in data.values() for _, y in pts]
        y_vals = nice_ticks(min(ys + [y0]), max(ys + [y1]), 4)
        y0, y1 = y_vals[0], y_vals[-1]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / ((x1 - x0) or 1.0) * pw, 1)

    def py(y: float) -> float:
        return round(TOP + ph - (y - y0) / ((y1 - y0) or 1.0) * ph, 1)

    tip = tip_format or x_format
    out = []
    for k, (label, pts) in enumerate(data.items()):
        coords = [(px(x), py(y)) for x, y in pts]
        path = "".join(
            f"{'M' if i == 0 or (gaps and _skips(pts[i - 1][0], pts[i][0], xs)) else ' L'}{a} {b}"
            for i, (a, b) in enumerate(coords)
        )
        points = [
            Point(a, b, f"{label}: {x_label} {tip(x)}, {_pct(y) if y_percent else _fmt(y)}")
            for (a, b), (x, y) in zip(coords, pts, strict=True)
        ]
        out.append(
            Series(
                label=label,
                color=PALETTE[k % len(PALETTE)],
                dash=DASHES[k % len(DASHES)],
                marker=MARKERS[k % len(MARKERS)],
                path=path,
                points=points,
            )
        )
    return Chart(
        title=title,
        x_label=x_label,
        y_label=y_label,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        right=WIDTH - RIGHT,
        bottom=TOP + ph,
        x_ticks=[Tick(px(v), x_format(v)) for v in x_ticks],
        y_ticks=[Tick(py(v), _pct(v) if y_percent else _fmt(v)) for v in y_vals],
        series=out,
    )


def sparkline(values: Sequence[float], width: int = 120, height: int = 28) -> dict[str, object] | None:
    """A tiny unlabelled trend line (per-frame norms): ``{'path', 'width', 'height', 'max'}``."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals:
        return None
    top = max(vals) or 1.0
    n = len(vals)
    step = (width - 4) / max(1, n - 1)
    pts = [
        (round(2 + i * step, 1), round(height - 2 - v / top * (height - 4), 1)) for i, v in enumerate(vals)
    ]
    return {"path": "M" + " L".join(f"{a} {b}" for a, b in pts), "width": width, "height": height, "max": top}


def _skips(a: float, b: float, xs: Sequence[float]) -> bool:
    """Whether some x of ``xs`` lies strictly between ``a`` and ``b``."""
    return any(a < x < b and not math.isclose(x, a) and not math.isclose(x, b) for x in xs)


def _finite(*vals: float) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in vals)
    except (TypeError, ValueError):
        return False


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"
