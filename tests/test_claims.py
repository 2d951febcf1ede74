"""The claims table: each rule reaches its verdict on synthetic numbers, every stored verdict follows from the
stored runs by those rules, and the stored Markdown table shows the same verdicts."""

from __future__ import annotations

import html
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from robustkit.report.claims import (
    HOLDS,
    MISSING,
    NOT_REPRODUCED,
    README_BEGIN,
    README_END,
    REVERSED,
    VACUOUS,
    Figure,
    claims,
    compare,
    derive,
    insert_section,
    render_html_section,
    render_markdown,
    stale_settings,
    verdicts_in_markdown,
    verdicts_in_summary,
)

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "results" / "claims.json"
NOTE = ROOT / "reports" / "examples" / "claims.md"


def record(dataset: str, recipe: str, seed: int, clean: float, robust: dict[str, float] | None = None,
           passes: float = 1.0, classes: int = 10) -> dict[str, Any]:  # fmt: skip
    attacks = {name: {"robust": v, "worst_view": "whole-batch", "views": {"whole-batch": v}}
               for name, v in (robust or {}).items()}  # fmt: skip
    return {
        "dataset": dataset, "recipe": recipe, "seed": seed, "num_classes": classes,
        "train": {"relative_passes": passes, "relative_seconds": passes * 1.2},
        "eval": {"clean": clean, "n": 100, "attacks": attacks},
    }  # fmt: skip


def stored_runs(figures: dict[str, list[tuple[float, float]]], dataset: str = "shapes",
                attack: str = "pgd-linf") -> dict[str, Any]:  # fmt: skip
    """recipe -> [(clean, robust) per seed] as a claims.json-shaped dict."""
    runs = {}
    for recipe, per_seed in figures.items():
        for seed, (clean, robust) in enumerate(per_seed):
            runs[f"{dataset}/{recipe}/s{seed}"] = record(dataset, recipe, seed, clean, {attack: robust})
    return {"protocol": {"seeds": [0, 1, 2], "attacks": {attack: "PGD"}}, "runs": runs}


def row(stored: dict[str, Any], key: str) -> dict[str, Any]:
    return next(r for r in derive(stored, published={}) if r["key"] == key)


# ----------------------------------------------------------------------------- the rules
def test_compare_spread_rule() -> None:
    a, b = Figure((0.50, 0.52, 0.48)), Figure((0.30, 0.31, 0.29))
    assert compare(a, b)[0] == HOLDS
    assert compare(b, a)[0] == REVERSED
    assert compare(a, Figure((0.49, 0.47, 0.51)))[0] == NOT_REPRODUCED
    # a gap the size of the seeds' spread does not count: std(a) + std(b) = 0.2 > gap 0.15
    wide = Figure((0.35, 0.55, 0.45))
    assert compare(wide, Figure((0.20, 0.40, 0.30)))[0] == NOT_REPRODUCED
    assert compare(Figure((3.0,)), Figure((11.5,)), lower=True)[0] == HOLDS  # cost: lower is the claim
    assert compare(Figure((0.305,)), Figure((0.30,)))[0] == NOT_REPRODUCED  # below the 1-point floor


@pytest.mark.parametrize(
    ("nofrost", "bn_at", "verdict"),
    [
        ([(0.9, 0.40), (0.91, 0.42), (0.9, 0.41)], [(0.8, 0.20), (0.8, 0.22), (0.81, 0.21)], HOLDS),
        ([(0.9, 0.21), (0.91, 0.22), (0.9, 0.20)], [(0.8, 0.20), (0.8, 0.22), (0.81, 0.21)], NOT_REPRODUCED),
        ([(0.9, 0.10), (0.91, 0.12), (0.9, 0.11)], [(0.8, 0.40), (0.8, 0.42), (0.81, 0.41)], REVERSED),
        ([(0.9, 0.40), (0.91, 0.42), (0.9, 0.41)], [(0.11, 0.0), (0.1, 0.0), (0.12, 0.0)], VACUOUS),
    ],
)
def test_each_verdict_is_reached(nofrost: list, bn_at: list, verdict: str) -> None:
    stored = stored_runs({"nofrost": nofrost, "bn-at": bn_at})
    r = row(stored, "nofrost-pgd")
    assert r["verdict"] == verdict, r["reason"]
    assert r["seeds"] == 3
    if verdict == VACUOUS:
        assert "bn-at" in r["reason"] and "nofrost" not in r["reason"].split(":")[-1]


def test_random_control_must_train_and_be_near_zero() -> None:
    ft = [(0.95, 0.30), (0.96, 0.32), (0.95, 0.31)]
    at_chance = stored_runs({"bn-finetune": ft, "bn-random": [(0.09, 0.0), (0.12, 0.0), (0.11, 0.0)]})
    assert row(at_chance, "walter-random")["verdict"] == VACUOUS  # the "9-12% clean" case
    trained = stored_runs({"bn-finetune": ft, "bn-random": [(0.6, 0.01), (0.62, 0.02), (0.6, 0.0)]})
    assert row(trained, "walter-random")["verdict"] == HOLDS
    not_zero = stored_runs({"bn-finetune": ft, "bn-random": [(0.6, 0.15), (0.62, 0.16), (0.6, 0.15)]})
    r = row(not_zero, "walter-random")
    assert r["verdict"] == NOT_REPRODUCED and "not ≈ 0" in r["reason"]


def test_cost_claim_uses_measured_passes_and_ignores_training_success() -> None:
    runs = {f"shapes/abnn/s{s}": record("shapes", "abnn", s, 0.1, passes=1.5) for s in range(3)}
    runs |= {f"shapes/pgd-at/s{s}": record("shapes", "pgd-at", s, 0.1, passes=11.5) for s in range(3)}
    r = row({"protocol": {}, "runs": runs}, "abnn-cost")
    assert r["verdict"] == HOLDS and "1.5 ± 0.0×" in r["robustkit"]


def test_missing_runs_are_reported_not_judged() -> None:
    r = row(stored_runs({"nofrost": [(0.9, 0.4)]}), "nofrost-pgd")
    assert r["verdict"] == MISSING and "bn-at" in r["reason"]


def test_worst_view_is_named() -> None:
    stored = stored_runs({"abnn": [(0.99, 0.2)] * 3, "standard": [(0.99, 0.0)] * 3})
    for rec in stored["runs"].values():
        if rec["recipe"] == "abnn":
            rec["eval"]["attacks"]["pgd-linf"]["worst_view"] = "transfer:substitute"
    r = row(stored, "abnn-pgd-image")
    assert "abnn: transfer:substitute 3/3" in r["evaluation"]
    assert r["verdict"] == HOLDS


def test_markdown_and_html_show_the_verdicts_escaped() -> None:
    stored = stored_runs({"nofrost": [(0.9, 0.4)] * 3, "bn-at": [(0.8, 0.2)] * 3})
    stored["protocol"]["command"] = "<script>"
    rows = derive(stored, published={})
    text = render_markdown(stored, rows)
    assert verdicts_in_markdown(text) == [r["verdict"] for r in rows]
    section = render_html_section(stored, rows)
    assert "<script>" not in section and "&lt;script&gt;" in section
    page = "<html><body><main><section id='comparison'></section><article class=\"run\"></article></main></body></html>"
    once = insert_section(page, section)
    assert once.index('id="claims"') < once.index("<article") and insert_section(once, section) == once


def test_published_anchors_come_from_the_recipes() -> None:
    rows = {c.key: c.published for c in claims()}
    assert "87.5" in rows["abnn-clean"] and "83.3" in rows["abnn-clean"]
    assert "74.06" in rows["nofrost-clean"] and "59.28" in rows["nofrost-clean"]
    assert "23.56" in rows["nofrost-pgd"] and "13.57" in rows["nofrost-pgd"]
    assert "31.5" in rows["abnn-pgd-image"] and "31.5" not in rows["abnn-clean"]


# ----------------------------------------------------------------------------- the stored table
def test_stored_verdicts_follow_from_stored_numbers() -> None:
    stored = json.loads(STORED.read_text())
    rows = derive(stored)
    assert [r["key"] for r in rows] == [c.key for c in claims()]
    assert [r["verdict"] for r in rows] == [r["verdict"] for r in stored["rows"]]
    for r in rows:
        if r["verdict"] != MISSING:
            assert r["seeds"] == len(stored["protocol"]["seeds"]), r["key"]
    assert verdicts_in_markdown(NOTE.read_text()) == [r["verdict"] for r in rows]
    assert verdicts_in_summary((ROOT / "README.md").read_text()) == [r["verdict"] for r in rows]


def _script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "defenses_claims", ROOT / "benchmarks" / "defenses_claims.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["defenses_claims"] = module
    spec.loader.exec_module(module)
    return module


def test_script_plan_and_summary() -> None:
    script = _script()
    assert script.plan(["walter-random"]) == {"shapes": ["standard", "bn-finetune", "bn-random"]}
    full = script.plan(None)
    assert set(full) == {"shapes", "shapes-video"} and full["shapes-video"] == ["standard", "pgd-at", "abnn"]
    summary = {"clean_accuracy": 0.9, "n_samples": 10, "robust_accuracy": 0.1, "worst_view": "among-clean",
               "attacks": [{"name": "pgd-linf [whole-batch]", "params": {"name": "pgd-linf"}, "view": "whole-batch",
                            "robust_accuracy": 0.3},
                           {"name": "pgd-linf [among-clean]", "params": {"name": "pgd-linf"}, "view": "among-clean",
                            "robust_accuracy": 0.1}]}  # fmt: skip
    s = script.summarize(summary)
    assert (
        s["attacks"]["pgd-linf"]["robust"] == 0.1 and s["attacks"]["pgd-linf"]["worst_view"] == "among-clean"
    )


def test_script_table_rerenders_from_stored_json(tmp_path: Path) -> None:
    script = _script()
    stored = stored_runs({"nofrost": [(0.9, 0.4)] * 3, "bn-at": [(0.8, 0.2)] * 3})
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(stored))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nSTALE\n{README_END}\nrest\n")
    argv = ["--table", "--json", str(path), "--examples", str(tmp_path), "--readme", str(readme)]
    assert script.main(argv) == 0
    text = (tmp_path / "claims.md").read_text()
    assert "nofrost-pgd: holds" in text
    assert 'id="claims"' in (tmp_path / "claims.html").read_text()
    summary = readme.read_text()
    assert summary.startswith("intro\n") and summary.endswith("rest\n") and "STALE" not in summary
    assert verdicts_in_summary(summary) == [r["verdict"] for r in derive(stored)]


@pytest.mark.slow
def test_script_quick_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on two recipes: train, evaluate, store, skip on rerun, render (about a minute on a CPU)."""
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    script = _script()
    argv = ["--quick", "--claims", "nofrost-clean", "--threads", "2", "--no-progress", "--json",
            str(tmp_path / "claims.json"), "--examples", str(tmp_path), "--work", str(tmp_path / "work"),
            "--readme", str(tmp_path / "README.md")]  # fmt: skip
    assert script.main(argv) == 0
    stored = json.loads((tmp_path / "claims.json").read_text())
    assert sorted(stored["runs"]) == ["shapes/bn-at/s0", "shapes/nofrost/s0"]
    run = stored["runs"]["shapes/nofrost/s0"]
    assert (
        run["eval"]["n"] == 16
        and "pgd-linf" in run["eval"]["attacks"]
        and run["train"]["relative_passes"] > 5
    )
    nofrost = next(r for r in stored["rows"] if r["key"] == "nofrost-clean")
    assert nofrost["verdict"] in (HOLDS, NOT_REPRODUCED, REVERSED, VACUOUS) and nofrost["seeds"] == 1
    before = (tmp_path / "claims.json").stat().st_mtime_ns
    assert script.main(argv) == 0  # resumable: nothing re-run, the same numbers
    again = json.loads((tmp_path / "claims.json").read_text())
    assert again["runs"] == stored["runs"] and (tmp_path / "claims.json").stat().st_mtime_ns >= before


def test_every_departure_is_named_in_the_table_and_the_defense_report():
    from robustkit.defenses.base import DEFENSES
    from robustkit.report.claims import departures, render_html_section, render_markdown
    from robustkit.report.sections import defense

    stored = json.loads(STORED.read_text())
    named = departures(stored)
    for recipe in ("abnn", "nofrost", "bn-at", "bn-finetune", "bn-random", "pgd-at"):
        if recipe in named:
            assert named[recipe] == DEFENSES.create(recipe).departures and named[recipe]
            first = named[recipe][0]
            assert first in render_markdown(stored) and html.escape(first) in render_html_section(stored)
    meta = {"name": "abnn", "info": {"paper": "Lo & Patel", "prepared": {"departures": ["taps: x <b>"]}}}
    shown = defense(type("Run", (), {"meta": {"defense": meta}})())
    assert shown["departures"] == ["taps: x <b>"] and shown["paper"] == "Lo & Patel"


def test_runs_kept_from_before_a_recipe_changed_are_named() -> None:
    """A stored run whose settings are not its recipe's current ones is listed (which settings, then and
    now) in the note and the HTML section; runs matching their recipe are not."""
    import dataclasses

    from robustkit.defenses.base import DEFENSES

    stored = stored_runs({"pgd-at": [(0.9, 0.5), (0.9, 0.5)]})
    now = dataclasses.asdict(DEFENSES.create("pgd-at").trained_recipe().settings)
    for r in stored["runs"].values():
        r["config"] = {"settings": dict(now)}
    assert stale_settings(stored) == []
    old = {k: v for k, v in now.items() if k != "clean_phase"}  # a field added since: its default applies
    stored["runs"]["shapes/pgd-at/s1"]["config"] = {"settings": {**old, "eps_warmup": 0.123}}
    lines = stale_settings(stored)
    assert lines == [f"shapes/pgd-at (seed 1): trained with eps_warmup 0.123 (now {now['eps_warmup']})"]
    assert lines[0] in render_markdown(stored) and html.escape(lines[0]) in render_html_section(stored)
