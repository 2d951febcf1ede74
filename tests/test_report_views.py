"""The report's data side: a results store with image, physical and video attacks is built directly
(the attacks' own outputs, as the runner stores them), then loaded and rendered; the numbers in the
page are checked against what was stored. ``build_run`` is shared with the browser tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from robustkit.eot import EvalGrid
from robustkit.evaluation.metrics import summarize
from robustkit.evaluation.store import ArtifactRecord, BatchRecord, Outcome, SampleRecord, Store, pack_tensors
from robustkit.report import render_report
from robustkit.report.load import load_run
from robustkit.report.render import SECTIONS, render_html, run_view

HOSTILE_RUN = "<script>alert(1)</script>"
HOSTILE_MODEL = '<img src=x onerror="alert(2)">'
HOSTILE_CLASSES = ["<b>bold</b>", "\"quoted\" & 'apos'", "</td><script>alert(3)</script>", "plain"]


def _clip_pair(
    g: torch.Generator, c: int, t: int, h: int, w: int, eps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.randint(40, 200, (c, t, h, w), generator=g, dtype=torch.uint8)
    noise = torch.randint(-eps, eps + 1, (c, t, h, w), generator=g)
    return clean, (clean.int() + noise).clamp(0, 255).to(torch.uint8)


def build_run(
    root: Path,
    *,
    name: str = "synthetic",
    model: str = "tiny-net",
    classes: list[str] | None = None,
    attack_names: dict[str, str] | None = None,
    n: int = 12,
    defense: bool = True,
    finished: bool = True,
    seed: int = 0,
) -> Path:
    """A run directory holding image (PGD, APGD, an AutoAttack cascade), physical (patch, ROA) and
    video attacks, with artifacts, examples, findings, a defense and provenance, written through the
    store's own API. ``attack_names`` renames attacks (display names are user-controlled)."""
    classes = classes or ["cat", "dog", "ship", "car"]
    names = {
        "pgd2": "pgd@2/255",
        "pgd8": "pgd@8/255",
        "apgd": "apgd-ce@0.5",
        "aa": "autoattack@8/255",
        "patch": "patch",
        "roa": "roa",
        "video": "video-pgd@4/255",
    } | (attack_names or {})
    g = torch.Generator().manual_seed(seed)
    run_dir = root / re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60]
    run_dir.mkdir(parents=True)
    config = {"model": model, "data": "synthetic", "suite": "mixed", "limit": n, "seed": seed}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    store = Store(run_dir / "results.sqlite")
    labels = [i % len(classes) for i in range(n)]
    correct = [i % 6 != 5 for i in range(n)]  # samples 5 and 11 are misclassified
    store.set_meta("started_at", "2026-01-31T14:05:00+00:00")
    store.set_meta(
        "run",
        {"name": name, "model": {"kind": "object", "name": model}, "data": "synthetic", "split": "test",
         "classes": classes, "suite": "mixed", "seed": seed, "limit": n},
    )  # fmt: skip
    store.set_meta(
        "provenance",
        {"versions": {"torch": torch.__version__}, "python": "3.11", "platform": "test", "device": "cpu",
         "cpu_threads": 1},
    )  # fmt: skip
    if defense:
        store.set_meta(
            "defense",
            {"name": f"noise-{model}", "capabilities": {"stochastic": True, "batch_dependent": True,
             "non_differentiable": ["quantize"]},
             "how_honored": ["EOT over 8 draws per gradient step", "fixed batch composition (batch 128)",
                             "BPDA with identity for quantize"]},
        )  # fmt: skip
    rows = [
        SampleRecord(
            i, labels[i], labels[i] if correct[i] else (labels[i] + 1) % len(classes), correct[i], 0.9
        )
        for i in range(n)
    ]
    store.write_clean(rows, BatchRecord("clean", 0, n, 0.25, {}, list(range(n))))
    attacked = [i for i in range(n) if correct[i]]
    # robust sets: nested so that the cascade and the curves have known values
    robust = {
        "pgd2": set(attacked[:8]),
        "pgd8": set(attacked[:3]),
        "apgd": set(attacked[:6]),
        "aa": set(attacked[:2]),
        "patch": set(attacked[:7]),
        "roa": set(attacked[:9]),
        "video": set(attacked[:5]),
    }
    spec = {
        "pgd2": ("pgd", 2 / 255, "Linf", "image"),
        "pgd8": ("pgd", 8 / 255, "Linf", "image"),
        "apgd": ("apgd-ce", 0.5, "L2", "image"),
        "aa": ("autoattack", 8 / 255, "Linf", "image"),
        "patch": ("patch", None, None, "image"),
        "roa": ("roa", None, None, "image"),
        "video": ("video-pgd", 4 / 255, "Linf", "video"),
    }
    grid = EvalGrid()
    p = grid.points()["rotation"].numel()
    for key, (attack, eps, norm, kind) in spec.items():
        aid = store.attack_id(names[key], attack, {"attack": attack, "eps": eps}, eps, norm, kind)
        skip = [i for i in range(n) if not correct[i]]
        store.write_outcomes(
            aid, [Outcome(i, False, False, False, rows[i].pred, 0.9) for i in skip],
            BatchRecord(names[key], -1 - skip[0], len(skip), 0.0),
        )  # fmt: skip
        for first in (0, 6):
            chunk = [i for i in attacked if first <= i < first + 6]
            out, examples, artifacts = [], {}, {}
            for j, i in enumerate(chunk):
                ok = i in robust[key]
                metrics: dict[str, float] = {}
                if key == "aa":
                    metrics["broken_by"] = -1.0 if ok else float(j % 2)
                if key in ("patch", "roa"):
                    metrics["eot_success_rate"] = 0.0 if ok else 0.75
                    metrics["target"] = 0.0
                if key == "video":
                    metrics.update(frame_linf_mean=3 / 255, frame_linf_max=4 / 255, frames_changed=1.0)
                pred = labels[i] if ok else (labels[i] + 1) % len(classes)
                e = eps if eps is not None else 0.3
                out.append(Outcome(i, True, not ok, ok, pred, 0.8, e, e * 10, metrics))
                if i < 4:
                    if kind == "video":
                        clean, adv = _clip_pair(g, 3, 6, 16, 16, 4)
                    else:
                        clean, adv = _clip_pair(g, 3, 1, 16, 16, 8 if key != "patch" else 0)
                        clean, adv = clean[:, 0], adv[:, 0]
                        if key == "patch":
                            adv[:, 4:10, 4:10] = 255
                    examples[i] = pack_tensors({"clean": clean, "adv": adv})
            if key == "aa":
                artifacts["cascade"] = ("json", json.dumps([
                    {"attack": "apgd-ce", "robust_after": 3, "seconds": 1.0, "counters": {"forward": 10, "backward": 9}},
                    {"attack": "apgd-t", "robust_after": 1 if first == 0 else 2, "seconds": 2.0, "counters": {"forward": 20}},
                ]).encode())  # fmt: skip
            if key == "patch":
                artifacts["patch"] = ("tensor", pack_tensors({"patch": torch.rand(3, 8, 8, generator=g)}))
                artifacts["placement"] = ("json", json.dumps({
                    "angle": [10.0 * j for j in range(len(chunk))], "side": [5.0] * len(chunk),
                    "center": [[8.0, 8.0]] * len(chunk)}).encode())  # fmt: skip
                hits = torch.rand(p, len(chunk), generator=g) < 0.5
                artifacts["eot_curve"] = ("json", json.dumps(grid.curves(hits)).encode())
            if key == "roa":
                artifacts["position"] = ("json", json.dumps([[2, 3 + j] for j in range(len(chunk))]).encode())
                artifacts["rect_hw"] = ("json", json.dumps([5, 4]).encode())
                artifacts["occlusion"] = (
                    "tensor",
                    pack_tensors({"occlusion": torch.rand(3, 16, 16, generator=g)}),
                )
                artifacts["eot_curve"] = (
                    "json",
                    json.dumps({"rotation": [-30, 0, 30], "accuracy": [0.5, 0.8, 0.5]}).encode(),
                )
            counters = {"forward": 11, "backward": 10, "queries": 11 * len(chunk)}
            store.write_outcomes(
                aid,
                out,
                BatchRecord(names[key], first, len(chunk), 0.5, counters, chunk),
                [ArtifactRecord(first, k, 0, kind, data) for k, (kind, data) in artifacts.items()],
                examples,
            )
    store.write_findings(
        [
            ("claimed-success-recheck", "pass", "every claimed success was confirmed", "nothing to do"),
            ("gradient-masking", "warn", "PGD with 10x the steps broke 3 more samples", "run more steps"),
            ("stochastic-model", "fail", "outputs differ between two passes", "evaluate with EOT"),
        ]
    )
    if finished:
        store.set_meta("elapsed", 12.5)
        store.set_meta("finished_at", "2026-01-31T14:05:13+00:00")
    summary = summarize(store, classes) | {"run": name, "model": model, "data": "synthetic", "suite": "mixed"}
    store.close()
    if finished:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def mixed_run(tmp_path: Path) -> Path:
    return build_run(tmp_path)


def test_every_section_is_rendered_with_stored_numbers(mixed_run: Path, tmp_path: Path) -> None:
    out = render_report([mixed_run], tmp_path / "r.html")
    html = out.read_text()
    for key, _ in SECTIONS:
        assert f'data-section="{key}"' in html, key
    assert 'data-section="header"' in html
    # summary: 10 of 12 clean-correct; worst case over all attacks keeps attacked[:2] = 2 samples
    assert "83.3%" in html and "16.7%" in html
    # the physical and video parts are there
    assert "video-pgd@4/255" in html and "Video clips" in html
    assert "positions on the 16×16 image" in html
    assert "EvalGrid" not in html and "Attack success rate vs rotation" in html
    assert "BPDA with identity for quantize" in html
    assert html.count("<script") == 1


def test_closing_note_names_the_commands_that_regenerate_it(mixed_run: Path, tmp_path: Path) -> None:
    from robustkit.report.examples import main as examples_main
    from robustkit.report.render import EXAMPLES_COMMAND

    html = render_report([mixed_run], tmp_path / "r.html").read_text()
    footer = html[html.index("<footer>") :]
    assert EXAMPLES_COMMAND == "python -m robustkit.report.examples" and EXAMPLES_COMMAND in footer
    assert f"robustkit report {mixed_run} --out {tmp_path / 'r.html'}" in footer
    with pytest.raises(SystemExit):  # the named command exists and parses its options
        examples_main(["--limit", "0"])


def test_cascade_counts_newly_broken_samples_within_a_threat_model(mixed_run: Path) -> None:
    view = run_view(load_run(mixed_run), "r0")
    groups = {g["label"]: g for g in view["cascade"]}
    linf8 = groups["Linf ε = 8/255"]
    assert [r["name"] for r in linf8["rows"]] == ["pgd@8/255", "autoattack@8/255"]
    assert [round(r["after"] * 12) for r in linf8["rows"]] == [3, 2]
    assert [r["newly_broken"] for r in linf8["rows"]] == [7, 1]
    stages = linf8["rows"][1]["stages"]
    assert [s["attack"] for s in stages] == ["apgd-ce", "apgd-t"]
    assert [round(s["robust_accuracy"] * 12) for s in stages] == [6, 3]
    assert "unbounded (physical, patch, …)" in groups


def test_curves_start_at_clean_accuracy_and_take_the_worst_case(mixed_run: Path) -> None:
    view = run_view(load_run(mixed_run), "r0")
    charts = {c.title: c for c in view["curves"]}
    assert set(charts) == {"Robust accuracy vs ε (L2)", "Robust accuracy vs ε (Linf)"}
    linf = {s.label: s for s in charts["Robust accuracy vs ε (Linf)"].series}
    assert set(linf) == {"pgd", "autoattack", "video-pgd", "worst case"}
    tips = [p.tip for p in linf["worst case"].points]
    assert tips[0].endswith("83%") and tips[-1].endswith("17%")  # clean at 0; 2 of 12 at 8/255
    eot = {e["axis"]: e for e in view["eot"]}
    assert {"rotation", "scale", "brightness"} <= set(eot)
    rot = eot["rotation"]["chart"] if eot["rotation"]["metric"] == "success_rate" else None
    assert rot is not None and [s.label for s in rot.series] == ["patch"]
    assert any(e["metric"] == "accuracy" for e in view["eot"])  # the {rotation, accuracy} form


def test_user_strings_are_escaped_in_the_markup(tmp_path: Path) -> None:
    run = build_run(
        tmp_path, name=HOSTILE_RUN, model=HOSTILE_MODEL, classes=HOSTILE_CLASSES,
        attack_names={"pgd8": "<svg onload=alert(4)>", "patch": "<i>patch</i>"},
    )  # fmt: skip
    html = render_html([load_run(run)])
    assert "<script>alert" not in html and "alert(1)" in html
    assert "<img src=x" not in html and "<svg onload" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<i>patch</i>" not in html and "&lt;i&gt;patch&lt;/i&gt;" in html


def test_comparison_puts_a_table_first_then_each_run(tmp_path: Path) -> None:
    a = build_run(tmp_path, name="baseline", defense=False)
    b = build_run(tmp_path, name="defended", model="tiny-net-abnn", seed=1)
    html = render_report([a, b], tmp_path / "cmp.html").read_text()
    assert html.index('data-section="comparison"') < html.index('id="r0"') < html.index('id="r1"')
    assert html.count('data-section="summary"') == 2
    assert "Worst-case robust accuracy vs ε (Linf)" in html


def test_an_unfinished_run_renders_from_its_store(tmp_path: Path) -> None:
    run = build_run(tmp_path, finished=False)
    html = render_report([run], tmp_path / "r.html").read_text()
    assert "has not finished" in html and 'data-section="findings"' in html


def test_report_stays_small(mixed_run: Path, tmp_path: Path) -> None:
    size = render_report([mixed_run], tmp_path / "r.html").stat().st_size
    assert size < 250_000, size


def test_the_input_normalisation_is_shown_in_the_run_header(mixed_run: Path, tmp_path: Path) -> None:
    """``summary["normalization"]`` (what ``--normalize`` or the architecture's metadata chose) is shown."""
    path = mixed_run / "summary.json"
    summary = json.loads(path.read_text())
    assert "input normalisation" not in render_report([mixed_run], tmp_path / "a.html").read_text()
    norm = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "source": "torchvision weights meta"}
    path.write_text(json.dumps(summary | {"normalization": norm}))
    html = render_report([mixed_run], tmp_path / "b.html").read_text()
    assert "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (torchvision weights meta)" in html
    path.write_text(json.dumps(summary | {"normalization": {"mean": None, "std": None, "source": "<none>"}}))
    assert "none (&lt;none&gt;)" in render_report([mixed_run], tmp_path / "c.html").read_text()
