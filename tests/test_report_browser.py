"""The report in a real browser: headless Debian Chromium driven by Playwright (no browser download).

Every page must load from the file alone (no request leaves it), log no console error (a CSP
violation or a broken image logs one), show every section, and paint something (screenshot pixel
variance). Hostile run, model, class and attack names must render as text. The layout must fit a
phone's width and print to PDF.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustkit.report import render_report
from robustkit.report.render import SECTIONS

from .test_report_views import HOSTILE_CLASSES, HOSTILE_MODEL, HOSTILE_RUN, build_run

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
CHROMIUM = os.environ.get("ROBUSTKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("Debian's chromium is not installed (scripts/test installs it)", allow_module_level=True)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ALL_SECTIONS = ["header"] + [key for key, _ in SECTIONS]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty user-data-dir
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


class Visit:
    """One page load with everything it logged, requested or tried to pop up."""

    def __init__(self, context, path: Path, width: int = 1280) -> None:
        self.page = context.new_page()
        self.page.set_viewport_size({"width": width, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url, wait_until="load")

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        leaving = [u for u in self.requests if u != self.url and not u.startswith("data:")]
        assert leaving == [], leaving
        broken = self.page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
        )
        assert broken == [], broken

    def sections(self, anchor: str = "r0") -> list[str]:
        return self.page.evaluate(
            "(a) => Array.from(document.querySelectorAll(`#${a} [data-section]`))"
            ".filter(e => e.getBoundingClientRect().height > 0).map(e => e.dataset.section)",
            anchor,
        )

    def screenshot(self, out: Path) -> np.ndarray:
        png = self.page.screenshot(full_page=True)
        out.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)

    def close(self) -> None:
        self.page.close()


def assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 8.0, pixels.std()
    assert (pixels < 200).mean() > 0.02  # text, tables, images: a real share of the page is not white


def test_mixed_run_loads_offline_with_every_section(browser, tmp_path: Path) -> None:
    run = build_run(tmp_path / "runs")
    report = render_report([run], tmp_path / "report.html")
    v = Visit(browser, report)
    try:
        v.assert_clean()
        assert v.sections() == ALL_SECTIONS
        # physical and video parts are really drawn: charts with text, positions, animated clips
        assert v.page.locator("#r0-curves svg.chart text").count() > 5
        assert v.page.locator("#r0-eot svg.chart").count() >= 3
        assert v.page.locator("#r0-artifacts svg.positions").count() == 2
        assert v.page.locator("#r0-gallery img.clip").count() == 4
        assert v.page.locator("#r0-attacks tr.sub").count() == 2  # the AutoAttack inner cascade
        assert_not_blank(v.screenshot(tmp_path / "mixed.png"))
    finally:
        v.close()


def test_hostile_names_render_as_text(browser, tmp_path: Path) -> None:
    run = build_run(
        tmp_path / "runs", name=HOSTILE_RUN, model=HOSTILE_MODEL, classes=HOSTILE_CLASSES,
        attack_names={"pgd8": "<svg onload=alert(4)>", "patch": "<img src=y onerror=alert(5)>"},
    )  # fmt: skip
    report = render_report([run], tmp_path / "report.html")
    v = Visit(browser, report)
    try:
        v.assert_clean()  # no alert dialog, no request for 'x' or 'y'
        page = v.page
        assert page.locator("h1").first.text_content() == HOSTILE_RUN
        assert HOSTILE_RUN in page.title()
        assert page.locator("#r0 .run-head dd").first.text_content().startswith(HOSTILE_MODEL)
        classes = page.locator("#r0-classes td.name").all_text_contents()
        assert classes == HOSTILE_CLASSES
        assert "<svg onload=alert(4)>" in page.locator("#r0-attacks").text_content()
        assert page.locator("script").count() == 1
        assert page.locator("img[src='x'], img[src='y'], svg[onload]").count() == 0
        assert (
            page.evaluate(
                "Array.from(document.querySelectorAll('b')).filter(b => b.textContent === 'bold').length"
            )
            == 0
        )
        assert v.sections() == ALL_SECTIONS
    finally:
        v.close()


def test_comparison_fits_a_phone_and_prints(browser, tmp_path: Path) -> None:
    a = build_run(tmp_path / "runs", name="baseline", defense=False)
    b = build_run(tmp_path / "runs", name="defended", model="tiny-net-abnn", seed=1)
    report = render_report([a, b], tmp_path / "compare.html")
    v = Visit(browser, report, width=390)
    try:
        v.assert_clean()
        assert v.page.locator("#comparison table tbody tr").count() == 2
        assert v.sections("r0") == ALL_SECTIONS and v.sections("r1") == ALL_SECTIONS
        overflow = v.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than a phone"
        assert_not_blank(v.screenshot(tmp_path / "phone.png"))
        pdf = v.page.pdf(format="A4", print_background=True)
        assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
        v.page.set_viewport_size({"width": 700, "height": 990})  # A4 inside the print margins, in CSS px
        v.page.emulate_media(media="print")
        assert v.page.locator("nav.toc").is_hidden()
        overflow = v.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the printed page is {overflow}px wider than A4"
    finally:
        v.close()


def test_real_run_report_from_the_runner(browser, tmp_path: Path) -> None:
    from robustkit.api import evaluate

    suite = {
        "name": "tiny",
        "description": "FGSM and 3-step PGD",
        "attacks": [
            {"attack": "fgsm", "norm": "Linf", "eps": ["2/255", "8/255"]},
            {"attack": "pgd", "norm": "Linf", "eps": ["8/255"], "steps": 3},
        ],
    }
    result = evaluate(
        "shapes-resnet",
        "shapes",
        suite,
        out=tmp_path,
        name="real",
        limit=12,
        batch_size=12,
        gallery=3,
        progress=False,
    )
    assert result.report is not None and result.report.stat().st_size < 400_000
    v = Visit(browser, result.report)
    try:
        v.assert_clean()
        assert v.sections() == ALL_SECTIONS
        assert v.page.locator("#r0-gallery .sample").count() == 3
        assert_not_blank(v.screenshot(tmp_path / "real.png"))
    finally:
        v.close()


# ------------------------------------------------------------------ issue 19: the report at desktop widths
LONG = "baseline-resnet50-imagenet-autoattack-standard-with-a-long-run-name"


def drop_attack(run_dir: Path, name: str) -> None:
    """Remove one attack from a run (as if its suite never measured that ε) and rewrite its summary."""
    import json
    import sqlite3

    from robustkit.evaluation.metrics import summarize
    from robustkit.evaluation.store import Store

    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        (aid,) = db.execute("SELECT id FROM attacks WHERE name = ?", (name,)).fetchone()
        for table in ("outcomes", "artifacts", "examples"):
            db.execute(f"DELETE FROM {table} WHERE attack_id = ?", (aid,))  # noqa: S608
        db.execute("DELETE FROM batches WHERE stage = ?", (name,))
        db.execute("DELETE FROM attacks WHERE id = ?", (aid,))
    db.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    store = Store(run_dir / "results.sqlite")
    summary.update(summarize(store, summary.get("classes")))
    store.close()
    (run_dir / "summary.json").write_text(json.dumps(summary))


def fits(v: Visit) -> None:
    """No nav link hidden or cut off, and the page no wider than the window."""
    nav = v.page.evaluate(
        "(() => { const n = document.querySelector('nav.toc');"
        " const links = Array.from(n.querySelectorAll('a')).map(a => a.getBoundingClientRect());"
        " return {scroll: n.scrollWidth, client: n.clientWidth, right: Math.max(...links.map(r => r.right)),"
        " hidden: links.filter(r => r.width === 0).length}; })()"
    )
    width = v.page.evaluate("window.innerWidth")
    assert nav["scroll"] <= nav["client"] + 1 and nav["right"] <= width and nav["hidden"] == 0, nav
    assert v.page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1


@pytest.mark.parametrize("width", [800, 1400])
def test_report_fixes_at_desktop_widths(browser, tmp_path: Path, width: int) -> None:
    a = build_run(tmp_path / "runs", name=LONG, defense=False)
    b = build_run(
        tmp_path / "runs", name=LONG.replace("baseline", "defended"), model="tiny-net-abnn", seed=1, n=6
    )
    drop_attack(b, "pgd@2/255")
    single = render_report([a], tmp_path / "single.html")
    v = Visit(browser, single, width=width)
    try:
        v.assert_clean()
        fits(v)
        # the headline says at which ε (the largest per norm) and which attacks have no ε
        assert (
            v.page.locator("#r0-summary .headline .at").text_content()
            == "ε ≤ 8/255 (L∞), 0.5 (L2); and patch, roa"
        )
        # a passing check asks for nothing; the others keep their advice
        todo = {
            row.locator("td").nth(0).text_content(): row.locator("td").nth(3).text_content()
            for row in v.page.locator("#r0-findings tbody tr").all()
        }
        assert todo["claimed-success-recheck"] == "nothing: the check passed"
        assert (
            todo["gradient-masking"] == "run more steps" and todo["stochastic-model"] == "evaluate with EOT"
        )
        # forward / backward / queries explained at the table that shows them
        counts = v.page.locator("#r0-attacks p.note .counts")
        assert counts.is_visible() and "batched passes through the model" in counts.text_content()
        assert v.page.locator("#r0-attacks th[title]").count() == 3
    finally:
        v.close()
    v = Visit(browser, render_report([a, b], tmp_path / "compare.html"), width=width)
    try:
        v.assert_clean()
        fits(v)
        warning = v.page.locator("#comparison .warn-box")
        assert warning.count() == 1 and "different numbers of samples (6, 12)" in warning.text_content()
        # Linf: run a measured eps 2, 4, 8 (/255); run b only 4 and 8: b's line breaks over 2/255
        chart = v.page.locator("#comparison figure.chart").filter(has_text="(Linf)")
        paths = chart.locator("path.line").evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert [p.count("M") for p in paths] == [1, 2], paths
    finally:
        v.close()
