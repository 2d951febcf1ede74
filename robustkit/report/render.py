"""Render one or several runs into a single self-contained HTML file (Jinja2 with autoescaping).

The page needs no network: styles, the one small script (open collapsed parts before printing),
charts (inline SVG) and images (data URIs) are all inside. A Content-Security-Policy meta tag forbids
every fetch except ``data:`` images and allows only that script, by hash, so even a string that
slipped past escaping could neither run nor load anything.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined, select_autoescape

from ..files import atomic_write
from ..version import __version__
from . import sections
from .compare import comparison
from .layout import LOADER, SECTIONS, navigation, register_section, registered
from .load import Run, load_run

__all__ = ["SECTIONS", "register_section", "render_html", "render_report", "run_view"]

SCRIPT = (
    'window.addEventListener("beforeprint",function(){'
    'document.querySelectorAll("details:not([open])").forEach(function(d){'
    'd.setAttribute("open","");d.setAttribute("data-print-opened","")})});'
    'window.addEventListener("afterprint",function(){'
    'document.querySelectorAll("details[data-print-opened]").forEach(function(d){'
    'd.removeAttribute("open");d.removeAttribute("data-print-opened")})});'
)
# The closing note names both commands: re-rendering this page and regenerating the shipped examples.
EXAMPLES_COMMAND = "python -m robustkit.report.examples"
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src '{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)


def _pct(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{100 * float(v):.{digits}f}%"


def _secs(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v < 10:
        return f"{v:.2f} s"
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.1f} h"


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{int(v):,}"


def _when(v: Any) -> str:
    """An ISO timestamp as '2026-01-31 14:05 UTC' (other strings unchanged)."""
    if not v:
        return "–"
    try:
        t = datetime.fromisoformat(str(v))
    except ValueError:
        return str(v)
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def _yesno(v: Any) -> str:
    return "–" if v is None else ("yes" if v else "no")


def _env() -> Environment:
    env = Environment(
        loader=LOADER,
        autoescape=select_autoescape(["html", "j2", "svg"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, secs=_secs, num=_num, yesno=_yesno, when=_when)
    return env


_ENV = _env()


def run_view(run: Run, anchor: str) -> dict[str, Any]:
    """Everything one run's part of the page shows: its anchor, its header and every registered
    section's views (``layout.register_section``), by the names the templates read."""
    view: dict[str, Any] = {"anchor": anchor, "header": sections.header(run)}
    for section in registered():
        view.update((name, fn(run)) for name, fn in section.views.items())
    return view


def rerender_command(runs: list[Run], out: str | Path | None = None) -> str:
    """The shell command that renders this page again from the same run directories."""
    dirs = " ".join(shlex.quote(str(r.dir)) for r in runs)
    return f"robustkit report {dirs} --out {shlex.quote(str(out)) if out else 'report.html'}"


def render_html(runs: list[Run], title: str | None = None, out: str | Path | None = None) -> str:
    """The report page for loaded runs (one run, or a comparison of several) as a string."""
    views = [run_view(r, f"r{k}") for k, r in enumerate(runs)]
    if title is None:
        title = views[0]["header"]["name"] if len(views) == 1 else f"Comparison of {len(views)} runs"
    return _ENV.get_template("report.html.j2").render(
        title=title,
        runs=views,
        comparison=comparison(runs) if len(runs) > 1 else None,
        sections=navigation(),
        layout=registered(),
        csp=CSP,
        script=SCRIPT,
        version=__version__,
        rerender=rerender_command(runs, out),
        examples_command=EXAMPLES_COMMAND,
        generated=_when(datetime.now(timezone.utc).isoformat(timespec="seconds")),
    )


def render_report(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Render the report for one run, or a side-by-side comparison of several, to ``out``."""
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    runs = [load_run(d) for d in run_dirs]
    return atomic_write(out, render_html(runs, title, out))
