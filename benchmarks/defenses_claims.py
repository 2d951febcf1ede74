"""The papers' claims, regenerated from runs: train every recipe a claim needs for several seeds, evaluate
each trained defense through robustkit's runner, store every run's numbers, render the claims table.

One command regenerates everything (resumable: a rerun skips the runs already stored with the same
settings; an interrupted training resumes from its last epoch):

    nice python benchmarks/defenses_claims.py --threads 2            # CPU, --scale cpu (the default)
    python benchmarks/defenses_claims.py --device cuda --scale recipe  # GPU: the recipes' own budgets
    python benchmarks/defenses_claims.py --table                      # re-render from the stored JSON

    --quick     smoke run: 1 epoch on 64 images, 16 test images / 8 clips, seed 0 unless --seeds is given
    --seeds     comma-separated seeds (default 0,1,2)
    --claims    comma-separated claim keys (default: all; robustkit.report.claims.claims())

Wall time (2 threads on a 2-core CPU shared with other work, load average 5-9, so 2-4x slower than a free
machine): ``--quick`` (seed 0, 10 trainings of 2 steps, 10 evaluations of 16 images / 8 clips) about 15 min (13 min
21 s measured for 9 of the 10 runs, of which training 5.5 min and ABNN's four-view evaluations 6.5 min); a
rerun with everything stored 5 s.
Measured seconds per training step on that machine: standard 0.3, pgd-at 1.6 (video 2.5 at load 1),
nofrost 4.2, ABNN 0.45-5; one ABNN forward+backward on 16 images 5.8 s (the target with adaptive BN at five
taps plus the substitute), which makes ABNN's four-view evaluation the largest single item. Estimate for the
default ``--scale cpu`` (each recipe's settings on at most ``CPU_TRAIN_SIZE`` = 640 images, at most 3
epochs: 60 steps; 48 test images, 24 clips): about 10 min of training and 3-5 min of evaluation per seed on
two free cores, 40-45 min for three seeds (more than the 30 min aimed at; fewer steps leave the adversarially
trained baselines at chance, i.e. every comparison vacuous). ``--scale recipe`` (2400 images, 4 epochs;
200 test images, 64 clips) is about 4x the training: run it on a GPU (``--device cuda``), where it takes
minutes. Verdicts from ``--scale cpu`` say what robustkit shows at that budget, not what the recipes can do.

What it runs: the recipes ``standard, pgd-at, abnn, nofrost, bn-at, bn-finetune, bn-random`` on the built-in
``shapes`` images and ``standard, pgd-at, abnn`` on the built-in ``shapes-video`` clips, each with
``train_defense(name, dataset, out_dir=<work>/<dataset>/<recipe>-s<seed>, seed=seed)`` into the run directory
(not the shared cache; BN-only fine-tuning starts from the same seed's ``standard`` run; ABNN's frozen
substitute comes from the recipe's own source, the zoo or the cache, as ``load_defense`` uses it). Each
trained defense is loaded with ``load_defense("recipe:<dir>/model.safetensors")`` and evaluated with
``robustkit.api.evaluate`` (its capabilities honored: ABNN in every batch view and by transfer from its
substitute; the stored robust accuracy of an attack is its worst view). Attacks: PGD-10 L-inf 8/255 (step
2/255, random start) on images; video PGD L-inf 4/255 (10 steps of 1/255) and video ROA (10% of each
frame, gradient-guided position, 10 steps) on clips.

Writes ``benchmarks/results/claims.json`` after every run (protocol, runs, the derived rows) and
``reports/examples/claims.md`` + ``claims.html``; the rules behind each verdict are
``robustkit.report.claims``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustkit.api import evaluate
from robustkit.defenses.base import DEFENSES
from robustkit.defenses.loading import cached_model, load_defense, load_weights, train_defense
from robustkit.device import resolve_device
from robustkit.files import atomic_write
from robustkit.report.claims import (
    claims,
    derive,
    render_html_section,
    render_markdown,
    render_summary,
    replace_block,
)
from robustkit.training.data import DataSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "claims.json"
EXAMPLES = ROOT / "reports" / "examples"
WORK = ROOT / "reports" / "claims-runs"

#: The attacks of each dataset's evaluation (names are what the claims refer to) and their plain words.
SUITES: dict[str, list[dict[str, Any]]] = {
    "shapes": [
        {"attack": "pgd", "name": "pgd-linf", "norm": "Linf", "eps": "8/255", "step_size": "2/255", "steps": 10,
         "random_start": True},
    ],
    "shapes-video": [
        {"attack": "video-pgd", "name": "video-pgd-linf", "norm": "Linf", "eps": "4/255", "step_size": "1/255",
         "steps": 10},
        {"attack": "video-roa", "name": "video-roa", "area": 0.1, "search": "gradient", "per_frame": True,
         "steps": 10, "step_size": "16/255"},
    ],
}  # fmt: skip
#: How each attack of ``SUITES`` reads in the table (filled from the suite entry actually run).
LABELS = {
    "pgd-linf": "PGD-{steps} L∞ {eps} (step {step_size}, random start)",
    "video-pgd-linf": "video PGD-{steps} L∞ {eps} (step {step_size}, random start)",
    "video-roa": "video ROA, {area:.0%} of each frame, gradient-guided position, {steps} steps",
}


def labels(quick: bool) -> dict[str, str]:
    return {a["name"]: LABELS[a["name"]].format(**a) for d in SUITES for a in suite(d, quick)["attacks"]}


QUICK_STEPS = {"pgd-linf": 3, "video-pgd-linf": 2, "video-roa": 2}

CPU_TRAIN_SIZE, CPU_EPOCHS = 640, 3
SCALES = {
    "recipe": "each recipe's own training settings",
    "cpu": f"each recipe's settings on at most {CPU_TRAIN_SIZE} training images and at most {CPU_EPOCHS} epochs",
    "quick": "1 epoch on 64 training images (smoke run)",
}
#: Test images (clips) per evaluation at each scale: ABNN is attacked in four views, each a full attack.
N_EVAL = {
    "quick": {"shapes": 16, "shapes-video": 8},
    "cpu": {"shapes": 48, "shapes-video": 24},
    "recipe": {"shapes": 200, "shapes-video": 64},
}
ORDER = ["standard", "pgd-at", "abnn", "nofrost", "bn-at", "bn-finetune", "bn-random"]


def overrides(recipe: str, scale: str) -> dict[str, Any]:
    """The training settings that differ from the recipe's at ``scale``."""
    if scale == "quick":
        return {"epochs": 1, "train_size": 64}
    if scale == "cpu":
        s = DEFENSES.create(recipe).trained_recipe().settings
        return {"epochs": min(s.epochs, CPU_EPOCHS), "train_size": min(s.train_size, CPU_TRAIN_SIZE)}
    return {}


def suite(dataset: str, quick: bool) -> dict[str, Any]:
    attacks = [dict(a) for a in SUITES[dataset]]
    if quick:
        for a in attacks:
            a["steps"] = QUICK_STEPS[a["name"]]
    return {
        "name": f"claims-{dataset}",
        "description": f"the claims table's attacks on {dataset}",
        "attacks": attacks,
    }


def plan(keys: list[str] | None) -> dict[str, list[str]]:
    """Dataset -> the recipes the selected claims compare (standard first: fine-tuning starts from it)."""
    need: dict[str, set[str]] = {}
    for c in claims():
        if keys is None or c.key in keys:
            need.setdefault(c.dataset, set()).update(c.recipes)
    for recipes in need.values():
        if "bn-finetune" in recipes:
            recipes.add("standard")
    return {d: [r for r in ORDER if r in rs] for d, rs in need.items()}


class Runner:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.work = Path(args.work)

    def run_dir(self, dataset: str, recipe: str, seed: int) -> Path:
        return self.work / f"{dataset}-{args_scale(self.args)}" / f"{recipe}-s{seed}"

    def loader(self, dataset: str, seed: int, recipe: str):  # noqa: ANN201 - train_defense's ``load``
        """For BN-only fine-tuning: ``standard`` from this seed's run (it fine-tunes that network); anything
        else from the cache ``load_defense`` uses (ABNN's substitute stays the recipe's own pre-trained
        network, the same for every seed, as at evaluation)."""

        def load(other: str) -> torch.nn.Module:
            mine = self.run_dir(dataset, other, seed)
            if recipe.startswith("bn-finetune") and other == "standard" and (mine / "model.json").is_file():
                base = DEFENSES.create(other)
                spec = DataSpec.from_dict(json.loads((mine / "model.json").read_text())["spec"])
                model = load_weights(base.build(spec, base.settings), mine / "model.safetensors")
                return model.to(self.device).eval()
            return cached_model(other, dataset, self.device, self.args.progress)[0]

        return load

    def train(self, dataset: str, recipe: str, seed: int) -> dict[str, Any]:
        info = train_defense(
            recipe, dataset, out_dir=self.run_dir(dataset, recipe, seed), device=self.device, seed=seed,
            progress=self.args.progress, load=self.loader(dataset, seed, recipe), test_size=N_EVAL[args_scale(self.args)][dataset] * 4,
            **overrides(recipe, args_scale(self.args)),
        )  # fmt: skip
        cost = info["cost"]
        return {
            "clean_test_accuracy": info["clean_test_accuracy"],
            "test_samples": info.get("test_samples"),
            "train_samples": info.get("train_samples"),
            "epochs": info["epochs_done"],
            "steps": cost["steps"],
            "passes_per_step": cost["passes_per_step"]["total"],
            "relative_passes": cost["relative_passes"],
            "relative_seconds": cost["relative_seconds"],
            "seconds": cost["seconds_per_step"] * cost["steps"],
            "loss_by_epoch": [round(h["loss"], 4) for h in info.get("history", [])],
            "prepared": info.get("prepared"),
            "settings": info.get("settings"),
        }

    def evaluate(self, dataset: str, recipe: str, seed: int) -> dict[str, Any]:
        weights = self.run_dir(dataset, recipe, seed) / "model.safetensors"
        defense = load_defense(f"{recipe}:{weights}", dataset=dataset, device=self.device, progress=False)
        result = evaluate(
            defense, data=dataset, suite=suite(dataset, self.args.quick), limit=n_eval(self.args, dataset),
            batch_size=self.args.eval_batch, seed=seed, out=str(self.work / "evaluations"), name=f"{dataset}-{recipe}-s{seed}",
            device=str(self.device), progress=self.args.progress, report=False, gallery=0, overwrite=True,
        )  # fmt: skip
        return summarize(result.summary)


def summarize(summary: dict[str, Any]) -> dict[str, Any]:
    """Clean accuracy and, per attack, the worst view's robust accuracy (and every view's) of a run summary."""
    attacks: dict[str, dict[str, Any]] = {}
    for entry in summary["attacks"]:
        name = entry.get("params", {}).get("name") or entry["name"].split(" [")[0]
        view = entry.get("view") or "white-box"
        a = attacks.setdefault(name, {"views": {}})
        a["views"][view] = entry["robust_accuracy"]
    for a in attacks.values():
        worst = min(a["views"], key=lambda v: a["views"][v])
        a["robust"], a["worst_view"] = a["views"][worst], worst
    return {
        "clean": summary["clean_accuracy"],
        "n": summary["n_samples"],
        "robust_worst": summary["robust_accuracy"],
        "worst_view": summary.get("worst_view"),
        "attacks": attacks,
        "seconds": summary.get("seconds"),
        "complete": summary.get("complete"),
    }


def n_eval(args: argparse.Namespace, dataset: str) -> int:
    return args.n_eval or N_EVAL[args_scale(args)][dataset]


def args_scale(args: argparse.Namespace) -> str:
    return "quick" if args.quick else args.scale


def run_config(args: argparse.Namespace, dataset: str, recipe: str) -> dict[str, Any]:
    """What determines a run's numbers; a stored run with another config is run again."""
    return {
        "scale": args_scale(args),
        "overrides": overrides(recipe, args_scale(args)),
        "settings": dataclasses.asdict(DEFENSES.create(recipe).trained_recipe().settings),
        "suite": suite(dataset, args.quick),
        "n_eval": n_eval(args, dataset),
    }


def load_stored(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"protocol": {}, "runs": {}}


def write(stored: dict[str, Any], args: argparse.Namespace) -> None:
    stored["rows"] = derive(stored)
    atomic_write(Path(args.json), json.dumps(stored, indent=2, default=str) + "\n")


def render(stored: dict[str, Any], args: argparse.Namespace) -> str:
    rows = derive(stored)
    text = render_markdown(stored, rows)
    out = Path(args.examples)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "claims.md", text)
    page = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>robustkit: paper claims</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:90%}.ok{background:#e6f4ea}"
        ".warn{background:#fef7e0}.fail{background:#fce8e6}</style></head><body>\n"
        + render_html_section(stored, rows) + "</body></html>\n"
    )  # fmt: skip
    atomic_write(out / "claims.html", page)
    readme = Path(args.readme)
    if readme.is_file():  # the README's short summary (between its claims markers)
        old = readme.read_text()
        new = replace_block(old, render_summary(stored, rows))
        if new != old:
            atomic_write(readme, new)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    parser.add_argument(
        "--scale", choices=["cpu", "recipe"], default="cpu", help="training budget (see above)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run at a tiny budget")
    parser.add_argument("--table", action="store_true", help="only re-render the table from the stored JSON")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="join the runs of partial invocations (e.g. one process per seed, each with its own --json "
        "and --work) into --json, then re-render",
    )
    parser.add_argument("--claims", default=None, help="comma-separated claim keys (default: all)")
    parser.add_argument(
        "--n-eval", type=int, default=None, help="test images per evaluation (default 100 / 48 clips)"
    )
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument(
        "--json", default=str(RESULTS), help="the stored runs (default benchmarks/results/claims.json)"
    )
    parser.add_argument(
        "--examples", default=str(EXAMPLES), help="where claims.md/.html go (default reports/examples)"
    )
    parser.add_argument(
        "--readme", default=str(ROOT / "README.md"), help="README whose claims block is rewritten"
    )
    parser.add_argument("--work", default=str(WORK), help="run directories (weights, evaluations)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = Path(args.json)
    stored = merged([load_stored(Path(p)) for p in args.merge]) if args.merge else load_stored(path)
    if args.table or args.merge:
        if not stored["runs"]:
            parser.error(f"--table: no stored runs in {path}")
        write(stored, args)  # the derived rows follow the current rules; the stored numbers stay as they are
        print(render(stored, args))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.eval_batch = min(args.eval_batch, 16)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    keys = [k.strip() for k in args.claims.split(",")] if args.claims else None
    known = [c.key for c in claims()]
    if keys and any(k not in known for k in keys):
        parser.error(
            f"--claims: unknown {[k for k in keys if k not in known]}; choose from {', '.join(known)}"
        )
    device = resolve_device(args.device)
    started = time.perf_counter()
    spent = 0.0
    runner = Runner(args, device)
    wanted = plan(keys)
    # a run stored with other settings, or one not wanted now, leaves the table (the table is this command's)
    keep = {f"{d}/{r}/s{s}" for d, rs in wanted.items() for r in rs for s in seeds}
    stored["runs"] = {k: v for k, v in stored["runs"].items() if k in keep}
    for dataset, recipes in wanted.items():
        for seed in seeds:
            for recipe in recipes:
                key = f"{dataset}/{recipe}/s{seed}"
                config = run_config(args, dataset, recipe)
                old = stored["runs"].get(key)
                if old is not None and old.get("config") == json.loads(json.dumps(config, default=str)):
                    logging.info("%s: stored, skipped", key)
                    continue
                t0 = time.perf_counter()
                logging.info("%s: training", key)
                train = runner.train(dataset, recipe, seed)
                t1 = time.perf_counter()
                logging.info("%s: evaluating", key)
                evaluation = runner.evaluate(dataset, recipe, seed)
                t2 = time.perf_counter()
                spec = DataSpec.from_dict(
                    json.loads((runner.run_dir(dataset, recipe, seed) / "model.json").read_text())["spec"]
                )
                stored["runs"][key] = {
                    "dataset": dataset, "recipe": recipe, "seed": seed, "num_classes": spec.num_classes,
                    "config": config, "train": train, "eval": evaluation,
                    "seconds": {"train": t1 - t0, "evaluate": t2 - t1},
                }  # fmt: skip
                spent += t2 - t0
                stored["protocol"] = protocol(args, device, seeds, spent, stored)
                write(stored, args)
    stored["protocol"] = protocol(args, device, seeds, spent, stored)
    stored["protocol"]["wall_seconds_this_invocation"] = time.perf_counter() - started
    write(stored, args)
    print(render(stored, args))
    return 0


def merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One stored file from the runs of partial invocations of the same protocol (scale, attacks, sizes):
    their runs joined, their seeds and seconds summed into the protocol."""
    same = ("scale", "quick", "n_eval", "attacks", "suites")
    first = parts[0]["protocol"]
    for part in parts[1:]:
        if any(part["protocol"].get(k) != first.get(k) for k in same):
            raise SystemExit(f"--merge: the parts were run with different protocols ({', '.join(same)})")
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    seeds = sorted({r["seed"] for r in runs.values()})
    seconds = sum(sum(r.get("seconds", {}).values()) for r in runs.values())
    command = f"python benchmarks/defenses_claims.py --scale {first['scale']}" + (
        f" --seeds {','.join(map(str, seeds))}" if seeds != [0, 1, 2] else ""
    )
    walls = [p["protocol"].get("wall_seconds_this_invocation") for p in parts]
    where = {r["dataset"]: p["protocol"].get("device", "?") for p in parts for r in p["runs"].values()}
    devices = sorted(set(where.values()))
    device = devices[0] if len(devices) == 1 else ", ".join(f"{d} ({ds})" for ds, d in sorted(where.items()))
    protocol = {**first, "seeds": seeds, "seconds": seconds, "seconds_this_invocation": None, "device": device,
                "command": command, "parts": len(parts),
                "wall_seconds_parallel": max((w for w in walls if w), default=None)}  # fmt: skip
    return {"protocol": protocol, "runs": dict(sorted(runs.items()))}


def protocol(
    args: argparse.Namespace, device: torch.device, seeds: list[int], spent: float, stored: dict[str, Any]
) -> dict[str, Any]:
    scale = args_scale(args)
    command = "python benchmarks/defenses_claims.py" + (" --quick" if args.quick else f" --scale {scale}")
    if args.seeds:
        command += f" --seeds {args.seeds}"
    seconds = sum(sum(r.get("seconds", {}).values()) for r in stored["runs"].values())
    return {
        "seeds": seeds, "scale": scale, "scale_note": SCALES[scale], "quick": args.quick,
        "n_eval": {d: n_eval(args, d) for d in SUITES}, "attacks": labels(args.quick),
        "suites": {d: suite(d, args.quick) for d in SUITES}, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "load_average": _load(), "seconds": seconds, "seconds_this_invocation": spent, "command": command,
    }  # fmt: skip


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
