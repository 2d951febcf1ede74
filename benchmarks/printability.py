"""Printability of the physical attacks' artefacts before and after the printability defaults.

Runs the eyeglass frame (built-in faces: per image, and the universal frame of ``attacks/eyeglass.yaml``),
the RP2 sticker and the universal patch (built-in signs) twice on the test images the zoo model
classifies correctly: ``before``, the recipes as they were (no penalty, the solid start colours, a
random patch), and ``after``, the same recipes with the calibrated printability settings of
``attacks/physical.yaml`` and ``attacks/eyeglass.yaml`` (total variation and non-printability weights,
the frame started from the worst printable colour). For every artefact: success after 8-bit rounding
(the attack's effectiveness), success after snapping the artefact to the printable palette
(``palette_success``), mean distance to the nearest printable colour (``palette_distance``), total
variation (``tv``), the fraction of pixels within 0.05 of the palette and Sharif et al.'s NPS. The
issue's bar: effectiveness within 10 points of ``before`` while ``palette_distance`` and ``tv`` at least
halve. The patch and the universal frame are trained (on a training split), so they run once per seed
(``--seeds``, default 0 to 4: a fresh training run and fresh placements each) and their rows give the
means, every seed's success and their standard deviation; the per-image attacks use the first seed.

    PYTHONPATH=. python benchmarks/printability.py --n 48 --threads 2 \\
        --out benchmarks/results/printability.json --md benchmarks/results/printability.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import repo_suite
from robustkit.builtin import faces, signs
from robustkit.builtin.zoo import load_zoo_model
from robustkit.functional.random import sample_generators

# What the calibrated defaults switch on, per attack (``after`` = the suites' entry).
SOLID = ("black", "white", "red", "green", "blue", "yellow", "brown", "gray")  # the frames' old start colours
BEFORE: dict[str, dict[str, Any]] = {
    "eyeglass": {"tv_weight": 0.0, "nps_weight": 0.0, "loss": "ce", "kappa": None, "step_size": 16 / 255,
                 "colors": SOLID},
    "sticker": {"tv_weight": 0.0, "nps_weight": 0.0, "loss": "ce", "kappa": None, "init_std": 0.1},
    "patch": {"tv_weight": 0.0, "nps_weight": 0.0, "kappa": None},
    "eyeglass-universal": {"tv_weight": 0.0, "nps_weight": 0.0, "colors": SOLID},
}  # fmt: skip
# trained on a training split: several seeds, their mean and spread
TRAINED = ("patch", "eyeglass-universal")
DATA = {
    "eyeglass": ("faces", faces.faces),
    "sticker": ("signs", signs.signs),
    "patch": ("signs", signs.signs),
    "eyeglass-universal": ("faces", faces.faces),
}
METRICS = ("palette_success", "palette_distance", "tv", "printable_fraction", "nps", "eot_success_rate")


def kind_of(attack) -> str:
    return f"{attack.name}-universal" if getattr(attack, "universal", False) else attack.name


def entries(suite: str, patch_iters: int | None) -> dict[str, Any]:
    """The first entry of every kind in ``BEFORE`` (``after``): the eyeglass, sticker and patch of the
    physical suite, the universal frame of the eyeglass suite."""
    out = {}
    for name in (suite, "eyeglass"):
        for entry in repo_suite(name).entries:
            kind, attack = kind_of(entry.attack), entry.attack
            if kind in BEFORE and kind not in out:
                if kind == "patch" and patch_iters:
                    attack = replace(attack, max_iter=patch_iters)
                out[kind] = attack
    return out


def evaluate(attack, model, data_name, dataset, n: int, seed: int, train: int) -> dict[str, Any]:
    test = dataset("test", n=4 * n)
    with torch.no_grad():
        pred = model(test.x).argmax(1)
    keep = (pred == test.y).nonzero()[:, 0][:n]
    x, y = test.x[keep], test.y[keep]
    # where the data know each object (the built-in signs), the attack is placed on it, as in a run
    placed = {} if getattr(test, "objects", None) is None else {"objects": test.objects.select(keep)}
    start = time.perf_counter()
    if getattr(attack, "name", "") == "patch" or getattr(attack, "universal", False):  # trained on a split
        tr = dataset("train", n=train)
        on = {} if getattr(tr, "objects", None) is None else {"objects": tr.objects}
        attack = attack.fit(model, tr.x, tr.y, generator=torch.Generator().manual_seed(seed), **on)
    result = attack(model, x, y, generator=sample_generators(seed, keep.tolist(), salt=1), **placed)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"data": data_name, "images": int(x.shape[0]), "seconds": round(seconds, 1)}
    row["success"] = float(result.success.float().mean())
    for key in METRICS:
        if key in result.metrics:
            row[key] = float(result.metrics[key].double().mean())
    return row


def pooled(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One row from the runs of several seeds: the means, and the success of every seed and its spread."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            row[key] = sum(r[key] for r in runs) / len(runs)
    row["seconds"] = round(sum(r["seconds"] for r in runs), 1)
    if len(runs) > 1:
        success = [r["success"] for r in runs]
        row |= {"seeds": seeds, "success_per_seed": success, "success_std": statistics.stdev(success)}
    return row


def success(row: dict[str, Any]) -> str:
    if "success_std" not in row:
        return f"{100 * row['success']:.1f}"
    return f"{100 * row['success']:.1f} ± {100 * row['success_std']:.1f} ({len(row['seeds'])} seeds)"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| attack | run | data | images | success | palette success | palette distance | TV | "
            "printable px | NPS | EOT success | s |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['run']} | {r['data']} | {r['images']} | {success(r)} | "
            f"{pct(r.get('palette_success'))} | {r['palette_distance']:.4f} | {r['tv']:.4f} | "
            f"{100 * r['printable_fraction']:.1f}% | {r['nps']:.2e} | {pct(r.get('eot_success_rate'))} | "
            f"{r['seconds']} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind in BEFORE:
        b = next((r for r in rows if r["attack"] == kind and r["run"] == "before"), None)
        a = next((r for r in rows if r["attack"] == kind and r["run"] == "after"), None)
        if b is None or a is None:
            continue
        out.append({
            "attack": kind,
            "success_drop_points": round(100 * (b["success"] - a["success"]), 1),
            "palette_distance_ratio": round(a["palette_distance"] / max(b["palette_distance"], 1e-12), 3),
            "tv_ratio": round(a["tv"] / max(b["tv"], 1e-12), 3),
            "meets_bar": bool(b["success"] - a["success"] <= 0.10 and a["palette_distance"] <= 0.5 * b["palette_distance"]
                              and a["tv"] <= 0.5 * b["tv"]),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="physical")
    parser.add_argument("--n", type=int, default=48, help="test images per attack")
    parser.add_argument("--train", type=int, default=128, help="training images for the patch")
    parser.add_argument("--patch-iters", type=int, default=None, help="override the patch's max_iter")
    parser.add_argument("--only", nargs="*", choices=list(BEFORE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the trained (universal) patch, each a fresh training run and test draw; "
                        "the per-image attacks use the first")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    if args.only and args.out and Path(args.out).is_file():  # rerun some attacks, keep the others' rows
        rows = [r for r in json.loads(Path(args.out).read_text())["rows"] if r["attack"] not in args.only]
    found = entries(args.suite, args.patch_iters)
    for kind in BEFORE:  # the cheap ones first; the results are written after every row
        if kind not in found or (args.only and kind not in args.only):
            continue
        after = found[kind]
        data_name, dataset = DATA[kind]
        model = load_zoo_model(f"{data_name}-resnet", progress=False).eval()
        seeds = args.seeds if kind in TRAINED else args.seeds[:1]
        for run, attack in (("before", replace(after, **BEFORE[kind])), ("after", after)):
            runs = [evaluate(attack, model, data_name, dataset, args.n, seed, args.train) for seed in seeds]
            row = {"attack": kind, "run": run} | pooled(runs, seeds)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, rows)
    print(table(rows))
    for c in verdicts(rows):
        print(json.dumps(c))


def commands() -> tuple[str, str | None]:
    """The command that regenerates every row (this one without ``--only``) and, for a partial rerun,
    the command that last updated some rows."""
    argv, full, skip = sys.argv, [], False
    for a in argv:
        skip = a == "--only" or (skip and not a.startswith("--"))
        if not skip:
            full.append(a)
    run = "PYTHONPATH=. python "
    return run + " ".join(full), (run + " ".join(argv) if len(full) != len(argv) else None)


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    checks = verdicts(rows)
    full, update = commands()
    if args.out:
        record = {"command": full, "rows": rows, "verdicts": checks} | (
            {"updated_by": update} if update else {}
        )
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write("# Printability of the physical attacks, before and after\n\n")
            f.write(f"`{full}`" + (f" (rows last updated by `{update}`)" if update else "") + "\n\n")
            f.write(f"{table(rows)}\n\n")
            for c in checks:
                f.write(f"- {c['attack']}: success {c['success_drop_points']:+.1f} points lower, palette "
                        f"distance x{c['palette_distance_ratio']}, TV x{c['tv_ratio']}, "
                        f"bar {'met' if c['meets_bar'] else 'NOT met'}\n")  # fmt: skip


if __name__ == "__main__":
    main()
