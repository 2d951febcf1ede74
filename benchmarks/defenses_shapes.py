"""Train every defense backend at reduced scale on the built-in ``shapes`` data and compare them.

The documented command (measured with 1 thread on a shared 2-core machine at load average ~15: training
all eight backends 36 min of step time, evaluating ten defenses 22 min; expect well under half on two
free cores; training is skipped when the trained defenses are already cached):

    nice python benchmarks/defenses_shapes.py --threads 1 --example

    --quick    smoke test: 256 training images, 1 epoch, 40 test images (a few minutes)

Training: every backend with its registered recipe (the reduced-scale defaults, ``robustkit train --list``)
through the cache ``load_defense`` uses, so a later ``robustkit evaluate --defense pgd-at,abnn,...`` reuses
these weights; re-running resumes or skips training. The cost per step (network passes and seconds,
relative to a standard-training step of the same network) is measured during training.

Evaluation: ``robustkit.api.evaluate_defenses`` runs one suite over every defense (each
defense's capabilities honored: fixed batch composition for the batch-dependent ABNN), on the first
``--n-eval`` test images (default 100) in fixed batches of ``--eval-batch``. The suite joins the built-in
recipes pgd-linf (2/255 and 8/255, 10 steps), autoattack-standard (L-inf 8/255) and physical (patch,
eyeglass, sticker, ROA) at the reduced costs of ``REDUCTIONS`` (``--suites`` picks parts). ABNN is
attacked white-box through both networks, with target-only gradients and by transfer from its substitute
(each run also in the batch views and the transfer view of ``robustkit.defenses.adaptive``; the full
per-view evaluation of ABNN alone is ``benchmarks/abnn_views.py``); its batch dependence is measured separately (PGD-10 8/255 on fixed batches, re-evaluated one
image at a time, among other batch-mates, and by an attacker who controls half of each batch).

Writes into ``--out`` (default ``reports``): ``<name>-comparison.html`` / ``.json`` (the side-by-side
report, with the claims table of ``benchmarks/defenses_claims.py`` when ``benchmarks/results/claims.json``
exists), ``<name>.json`` (everything measured) and ``<name>.md`` (the note: tables, the published anchors
once per paper claim beside this run's figures, ABNN verdicts, BN-only ordering); ``--example`` copies them
to ``reports/examples/`` as ``<name>.*``. ``--render reports/examples/defenses-shapes.json`` re-renders the
note (and the claims section of the HTML beside it) from a stored JSON without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from robustkit.api import evaluate_defenses
from robustkit.attacks.pgd import PGD
from robustkit.defenses.backbones import DataSpec
from robustkit.defenses.base import DEFENSES, Context, Defense
from robustkit.defenses.loading import cache_path, load_weights, train_defense
from robustkit.device import resolve_device
from robustkit.evaluation.compare import format_table
from robustkit.evaluation.suite import find_suite
from robustkit.functional.random import sample_generators
from robustkit.report.claims import claims, derive, insert_section, render_html_section
from robustkit.training.data import load_split

TRAINED = ["standard", "abnn", "abnn-batch", "pgd-at", "nofrost", "bn-at", "bn-finetune", "bn-random"]
EVALUATED = ["standard", "pgd-at", "abnn", "abnn-target-only", "abnn-transfer", "abnn-batch",
             "nofrost", "bn-at", "bn-finetune", "bn-random"]  # fmt: skip


class Bench:
    """Trains (or finds) every defense and builds its evaluation model."""

    def __init__(self, args: argparse.Namespace, device: torch.device, quick_dir: Path) -> None:
        self.args, self.device = args, device
        self.quick = args.quick
        self.work = quick_dir if args.quick else None
        self.models: dict[str, nn.Module] = {}
        self.infos: dict[str, dict[str, Any]] = {}

    def out_dir(self, name: str) -> Path:
        return self.work / name if self.work is not None else cache_path(name, "shapes")

    def trained(self, name: str) -> nn.Module:
        if name not in self.models:
            recipe = DEFENSES.create(name)
            overrides = {"epochs": 1, "train_size": 256} if self.quick else {}
            info = train_defense(
                name,
                "shapes",
                out_dir=self.out_dir(name),
                device=self.device,
                progress=self.args.progress,
                load=self.trained,
                **overrides,
            )
            model = recipe.build(DataSpec.from_dict(info["spec"]), recipe.settings)
            load_weights(model, Path(info["weights"]))
            self.models[name], self.infos[name] = model.to(self.device).eval(), info
        return self.models[name]

    def evaluated(self, name: str) -> tuple[nn.Module, dict[str, Any]]:
        recipe = DEFENSES.create(name)
        base = recipe.trained_recipe().name
        model = self.trained(base)
        ctx = Context(
            dataset="shapes",
            spec=DataSpec.from_dict(self.infos[base]["spec"]),
            device=self.device,
            progress=self.args.progress,
            load=self.trained,
        )
        model = recipe.view(model, ctx).to(self.device).eval()
        return model, self.infos[base]


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[s]).argmax(1) for s in batches(len(x), batch)])


def attack_all(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, batch: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on fixed batches; returns (adversarial images, predictions on each final adversarial batch)."""
    attack = PGD(norm="Linf", eps=eps, steps=steps)
    advs, preds = [], []
    for s in batches(len(x), batch):
        gens = sample_generators(seed, range(s.start, s.stop))
        adv = attack(model, x[s], y[s], generator=gens).x_adv
        with torch.no_grad():
            preds.append(model(adv).argmax(1))
        advs.append(adv)
    return torch.cat(advs), torch.cat(preds)


class WithBatchMates(nn.Module):
    """The defense sees ``x`` together with fixed clean batch-mates (an attacker who controls part of a batch)."""

    def __init__(self, model: nn.Module, mates: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mates = model, mates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, self.mates[: x.shape[0]]]))[: x.shape[0]]


def batch_dependence(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv8: torch.Tensor,
    clean_ok: torch.Tensor,
    args: argparse.Namespace,
    other: torch.Tensor,
) -> dict[str, Any]:
    """How much a sample's output depends on its batch-mates, for clean and adversarial inputs."""
    n, b = len(x), args.eval_batch
    acc = lambda p: float((p == y).float().mean())  # noqa: E731
    out: dict[str, Any] = {
        "clean_accuracy_batch": acc(predict(model, x, b)),
        "clean_accuracy_batch_of_1": acc(predict(model, x, 1)),
    }
    with torch.no_grad():  # the same samples next to other batch-mates: one class only (all circles)
        mixed = torch.cat(
            [
                model(torch.cat([x[s], other[: s.stop - s.start]]))[: s.stop - s.start].argmax(1)
                for s in batches(n, b // 2)
            ]
        )
    out["clean_accuracy_next_to_one_class"] = acc(mixed)
    out["clean_prediction_flips_vs_batch"] = float((mixed != predict(model, x, b)).float().mean())
    # adversarial examples crafted white-box on whole batches, re-evaluated in other company
    robust = lambda p: float((clean_ok & (p == y)).float().mean())  # noqa: E731
    out["pgd8_robust_in_attacked_batch"] = robust(predict(model, adv8, b))
    out["pgd8_robust_one_at_a_time"] = robust(predict(model, adv8, 1))

    def mates(s: slice) -> torch.Tensor:  # clean batch-mates: other test images (wrapping around)
        idx = (torch.arange(s.start, s.stop) + b // 2) % n
        return x[idx]

    with torch.no_grad():
        among_clean = torch.cat(
            [model(torch.cat([adv8[s], mates(s)]))[: s.stop - s.start].argmax(1) for s in batches(n, b // 2)]
        )
    out["pgd8_robust_among_clean_batch_mates"] = robust(among_clean)
    # an attacker who controls only half of each batch (the other half stays clean)
    preds = []
    for s in batches(n, b // 2):
        wrapped = WithBatchMates(model, mates(s)).eval()
        adv = PGD(norm="Linf", eps=8 / 255, steps=args.steps)(
            wrapped, x[s], y[s], generator=sample_generators(args.seed, range(s.start, s.stop))
        ).x_adv
        with torch.no_grad():
            preds.append(wrapped(adv).argmax(1))
    out["pgd8_robust_attacker_controls_half_batch"] = robust(torch.cat(preds))
    return out


# ----------------------------------------------------------------------------- the reduced attack suite
#: Cheaper settings for the built-in recipes (attack registry key -> overrides), so that ten defenses are
#: evaluated in minutes on a CPU. Stronger settings only lower the robust figures of defended models.
REDUCTIONS: dict[str, dict[str, Any]] = {
    "pgd": {"eps": ["2/255", "8/255"], "steps": 10},
    "autoattack": {"steps": 20, "n_targets": 3, "queries": 200},
    "patch": {"max_iter": 20, "train_samples": 64, "eot": {"n_samples": 2, "brightness": 0.1, "contrast": 0.1},
              "eval_draws": 0},
    "eyeglass": {"steps": 10, "eval_draws": 0},
    "sticker": {"steps": 10, "eval_draws": 0},
    "roa": {"steps": 5, "eval_draws": 0},
}  # fmt: skip
SUITES = {"pgd": "pgd-linf", "autoattack": "autoattack-standard", "physical": "physical"}


def reduced_suite(parts: list[str]) -> dict[str, Any]:
    """One suite from the built-in recipes ``parts`` (keys of ``SUITES``) with the ``REDUCTIONS`` applied."""
    attacks = []
    for part in parts:
        raw = yaml.safe_load(find_suite(SUITES[part]).read_text())
        for entry in raw["attacks"]:
            attacks.append({**entry, **REDUCTIONS.get(entry["attack"], {})})
    return {
        "name": "defenses-reduced",
        "description": "Reduced-cost versions of " + ", ".join(SUITES[p] for p in parts) + " (see benchmarks/defenses_shapes.py).",
        "attacks": attacks,
    }  # fmt: skip


def as_defenses(bench: Bench, names: list[str]) -> list[Defense]:
    out = []
    for name in names:
        model, info = bench.evaluated(name)
        recipe = DEFENSES.create(name)
        info = {k: v for k, v in info.items() if k != "history"}
        out.append(Defense(name=name, model=model, capabilities=recipe.capabilities,
                           info={**info, "recipe": name, "description": recipe.description,
                                 "paper": recipe.paper, "published": recipe.published}))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="reports", help="where the runs and the comparison go (default: reports)"
    )
    parser.add_argument("--name", default="defenses-shapes", help="prefix of every file and run directory")
    parser.add_argument(
        "--suites",
        default="pgd,autoattack,physical",
        help=f"comma-separated parts of the suite, from {', '.join(SUITES)}",
    )
    parser.add_argument("--example", action="store_true", help="also copy the results to reports/examples/")
    parser.add_argument("--quick", action="store_true", help="smoke test at tiny scale")
    parser.add_argument("--n-eval", type=int, default=None, help="test images (default 100, quick 40)")
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the batch-dependence study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--overwrite", action="store_true", help="re-run evaluations with other settings")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only re-render <name>.md (and the claims section of <name>.html) from a stored <name>.json",
    )
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render:
        stored = Path(args.render)
        text = render(json.loads(stored.read_text()))
        stored.with_suffix(".md").write_text(text)
        add_claims(stored.with_suffix(".html"))
        print(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.suites.split(",") if p.strip()]
    unknown = [p for p in parts if p not in SUITES]
    if unknown or not parts:
        parser.error(f"--suites: unknown part(s) {unknown}; choose from {', '.join(SUITES)}")
    n_eval = args.n_eval or (40 if args.quick else 100)
    if args.quick:
        args.eval_batch = min(args.eval_batch, 20)
    name = f"{args.name}-quick" if args.quick else args.name
    device = resolve_device(args.device)
    started = time.perf_counter()
    bench = Bench(args, device, Path(args.out) / f"{name}-models")
    for trained in TRAINED:
        logging.info("training / loading %s", trained)
        bench.trained(trained)
    trained_at = time.perf_counter()

    suite = reduced_suite(parts)
    _, report_path = evaluate_defenses(
        as_defenses(bench, EVALUATED), data="shapes", name=name, out=args.out, device=str(device),
        progress=args.progress, suite=suite, limit=n_eval, batch_size=args.eval_batch, seed=args.seed,
        gallery=2, overwrite=args.overwrite,
    )  # fmt: skip
    if report_path is not None:
        add_claims(report_path)
    evaluated_at = time.perf_counter()
    out = Path(args.out)
    comparison = json.loads((out / f"{name}-comparison.json").read_text())

    test = load_split("shapes", "test", n_eval)
    x, y = test.x.to(device), test.y.to(device)
    other = load_split("shapes", "holdout", 10 * args.eval_batch).x.to(device)[::10]  # all class 0 (circles)
    dependence = {}
    for variant in ("abnn-batch", "abnn"):  # batch statistics at test vs running statistics
        model, _ = bench.evaluated(variant)
        adv8, _ = attack_all(model, x, y, 8 / 255, args.steps, args.eval_batch, args.seed)
        ok = predict(model, x, args.eval_batch) == y
        dependence[variant] = batch_dependence(model, x, y, adv8, ok, args, other)

    rows = {r["defense"]: r for r in comparison["rows"]}
    ordering = {}
    for attack in comparison["attacks"]:
        if not attack.startswith(("pgd", "autoattack")):
            continue
        full, ft, rnd = (rows[k]["robust"][attack] for k in ("pgd-at", "bn-finetune", "bn-random"))
        if None not in (full, ft, rnd):
            ordering[attack] = {
                "full_at": full,
                "bn_finetune": ft,
                "bn_random": rnd,
                "holds": full > ft > rnd,
            }
    report = {
        "protocol": {
            "dataset": "shapes", "n_eval": n_eval, "eval_batch": args.eval_batch, "suite": suite,
            "batch_dependence_pgd_steps": args.steps, "seed": args.seed, "quick": args.quick,
            "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": _load(),
        },
        "training": {n: _training(bench, n) for n in TRAINED},
        "comparison": comparison,
        "batch_dependence": dependence,
        "bn_ordering": ordering,
        "seconds": {
            "train_or_load": trained_at - started,
            "evaluate": evaluated_at - trained_at,
            "total": time.perf_counter() - started,
        },
    }  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    text = render(report)
    (out / f"{name}.md").write_text(text)
    if args.example:
        examples = out / "examples" if out.name == "reports" else Path("reports/examples")
        examples.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / f"{name}.json", examples / f"{name}.json")
        shutil.copyfile(out / f"{name}.md", examples / f"{name}.md")
        if report_path is not None:
            shutil.copyfile(report_path, examples / f"{name}.html")
            add_claims(examples / f"{name}.html")
    print(text)
    return 0


CLAIMS = Path(__file__).resolve().parent / "results" / "claims.json"


def add_claims(page: Path, stored: Path = CLAIMS) -> bool:
    """Put the claims table (``benchmarks/defenses_claims.py``'s stored runs) into the defenses report
    ``page``; False when either is missing."""
    if not page.is_file() or not stored.is_file():
        return False
    runs = json.loads(stored.read_text())
    page.write_text(insert_section(page.read_text(), render_html_section(runs, derive(runs))))
    return True


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _training(bench: Bench, name: str) -> dict[str, Any]:
    info = bench.infos[name]
    cost = info["cost"]
    return {
        "clean_test_accuracy": info["clean_test_accuracy"],
        "train_samples": info.get("train_samples"),
        "epochs": info["epochs_done"],
        "steps": cost["steps"],
        "seconds": cost["seconds_per_step"] * cost["steps"],
        "passes_per_step": cost["passes_per_step"]["total"],
        "relative_passes": cost["relative_passes"],
        "relative_seconds": cost["relative_seconds"],
        "loss_by_epoch": [round(h["loss"], 3) for h in info.get("history", [])],
        "settings": info["settings"],
        "prepared": info.get("prepared"),
    }


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


#: The comparison's attack that measures each claim quantity of ``robustkit.report.claims`` here.
CLAIM_ATTACKS = {"robust:pgd-linf": "pgd-linf@8/255"}
#: The evaluation views of one trained defense: its figure is the worst of them (the strongest adaptive view).
VIEWS = {"abnn": ("abnn", "abnn-target-only", "abnn-transfer")}
VIEW_NAMES = {
    "abnn": "white-box",
    "abnn-target-only": "target-only",
    "abnn-transfer": "transfer from the substitute",
}


def _figure(rows: dict[str, dict[str, Any]], defense: str, quantity: str, training: dict[str, Any]) -> str:
    """robustkit's single-run figure of ``defense`` for a claim quantity ('-' where this run has none)."""
    if quantity == "cost":
        t = training.get(defense)
        return "-" if t is None else f"{t['relative_passes']:.1f}x"
    if quantity == "clean":
        return _pct(rows[defense]["clean_accuracy"]) if defense in rows else "-"
    attack = CLAIM_ATTACKS.get(quantity)
    views = [v for v in VIEWS.get(defense, (defense,)) if v in rows and attack is not None]
    values = [(rows[v]["robust"].get(attack), v) for v in views]
    values = [(a, v) for a, v in values if a is not None]
    if not values:
        return "-"
    worst, view = min(values)
    return _pct(worst) + (f" (worst view: {VIEW_NAMES.get(view, view)})" if len(values) > 1 else "")


def _published_table(report: dict[str, Any]) -> list[str]:
    """Published anchors once per paper claim, beside this benchmark's single-run (seed 0) figures."""
    rows = {r["defense"]: r for r in report["comparison"]["rows"]}
    lines = ["| paper | claim | paper's figure | robustkit, this run (seed 0) |", "|---|---|---|---|"]
    for c in claims():
        if c.dataset != report["protocol"]["dataset"]:
            here = "video: see the claims table"
        else:
            here = " vs ".join(f"{r} {_figure(rows, r, c.quantity, report['training'])}" for r in c.recipes)
        lines.append(f"| {c.paper} | {c.text} | {c.published} | {here} |")
    return lines + [
        "",
        "Single runs, one seed: re-training moved figures by up to 14 points. The claims table "
        "(`reports/examples/claims.md`, `python benchmarks/defenses_claims.py`) gives mean ± std over three "
        "seeds, the evaluation behind each figure and a verdict per claim.",
    ]


def abnn_verdict(rows: dict[str, dict[str, Any]], attack: str) -> str:
    """One plain sentence on what the three ABNN attacks say about gradient masking."""
    wb, to, tr = (rows[k]["robust"].get(attack) for k in ("abnn", "abnn-target-only", "abnn-transfer"))
    std = rows["standard"]["robust"].get(attack)
    if None in (wb, to, tr):
        return f"{attack}: not all three ABNN attacks were run."
    strongest = min(("white-box", wb), ("target-only", to), ("transfer", tr), key=lambda t: t[1])
    text = (f"{attack}: ABNN keeps {_pct(wb)}% under the white-box attack through both networks, "
            f"{_pct(to)}% with target-only gradients and {_pct(tr)}% under transfer from its substitute "
            f"(standard network: {_pct(std)}%). ")  # fmt: skip
    if strongest[0] != "white-box" and strongest[1] < wb - 0.02:
        text += (f"The {strongest[0]} attack is stronger than the white-box one: the white-box gradients are "
                 "partly masked, and the white-box figure overstates ABNN's robustness.")  # fmt: skip
    else:
        text += "The white-box attack is the strongest of the three: no sign of gradient masking."
    if std is not None and wb <= std + 0.02:
        text += " ABNN is no more robust than the undefended network here."
    return text


def render(report: dict[str, Any]) -> str:
    """The Markdown note: measured table, published anchors, ABNN variants, batch dependence, BN ordering."""
    p = report["protocol"]
    comp = report["comparison"]
    rows = {r["defense"]: r for r in comp["rows"]}
    load = p.get("load_average")
    lines = [
        f"# Defenses on shapes (reduced scale{', QUICK smoke test' if p['quick'] else ''})",
        "",
        f"{p['n_eval']} test images in fixed batches of {p['eval_batch']}; suite: {p['suite']['description']} "
        f"Device {p['device']}, {p['threads']} threads, torch {p['torch']}"
        + (f", load average at the end {load[0]:.1f}" if load else "") + ".",
        "",
        "## Measured (robust accuracy %, over all test images; training cost per step relative to standard training)",
        "",
        format_table(comp),
        "",
        "Training (clean accuracy on 2000 test images at the end of training):",
        "",
        "| defense | epochs | steps | clean % | loss by epoch | passes/step | x std (passes) | x std (time) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for n, t in report["training"].items():
        lines.append(
            f"| {n} | {t['epochs']} | {t['steps']} | {_pct(t['clean_test_accuracy'])} | "
            f"{', '.join(f'{v:.2f}' for v in t['loss_by_epoch'])} | {t['passes_per_step']:.1f} | "
            f"{t['relative_passes']:.1f} | {t['relative_seconds']:.1f} | {t['seconds']:.0f} |"
        )
    chance = 1 / 10
    for n, t in report["training"].items():
        if t["clean_test_accuracy"] < 1.5 * chance:
            lines += ["", f"**{n} did not train at this scale**: clean accuracy {_pct(t['clean_test_accuracy'])}% "
                      f"(chance {_pct(chance)}%), training loss by epoch {t['loss_by_epoch']} (ln 10 = 2.303). "
                      "Its robust figures below are those of a constant classifier and say nothing about the defense."]  # fmt: skip
    lines += [
        "",
        "## Published anchors, one per paper claim (full scale; compare ordering, not absolute numbers)",
        "",
    ]
    lines += _published_table(report)
    lines += [
        "",
        "## ABNN: white-box through both networks, target-only gradients, transfer from the substitute",
        "",
    ]
    attacks = comp["attacks"]
    lines += ["| view | clean | " + " | ".join(attacks) + " |", "|---|---|" + "---|" * len(attacks)]
    for k in ("abnn", "abnn-target-only", "abnn-transfer", "abnn-batch", "abnn-per-sample", "standard"):
        if k in rows:
            r = rows[k]
            lines.append(
                f"| {k} | {_pct(r['clean_accuracy'])} | "
                + " | ".join(_pct(r["robust"][a]) for a in attacks)
                + " |"
            )
    lines += [""] + [f"- {abnn_verdict(rows, a)}" for a in attacks if a.startswith(("pgd", "autoattack"))]
    dep = report["batch_dependence"]
    # runs before ABNN used running statistics stored the batch-statistics variant as "abnn"
    batch, other = ("abnn-batch", "abnn") if "abnn-batch" in dep else ("abnn", "abnn-per-sample")
    lines += ["", "## Batch dependence (accuracy %)", "", f"| measurement | {batch} (batch statistics) | {other} |",
              "|---|---|---|"]  # fmt: skip
    for key in dep[batch]:
        lines.append(f"| {key.replace('_', ' ')} | {_pct(dep[batch][key])} | {_pct(dep[other].get(key))} |")
    lines += ["", dependence_verdict(dep[batch])]
    lines += ["", "## BN-only fine-tuning ordering (full AT > BN-only fine-tuning > BN-only from random)", ""]
    for attack, v in report["bn_ordering"].items():
        lines.append(f"- {attack}: full AT {_pct(v['full_at'])}, BN-only fine-tuning {_pct(v['bn_finetune'])}, "
                     f"BN-only from random {_pct(v['bn_random'])}: ordering {'holds' if v['holds'] else 'does NOT hold'}.")  # fmt: skip
    if comp["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(comp["notes"])]
    s = report["seconds"]
    lines += ["", f"Training/loading took {s['train_or_load']:.0f} s, evaluation {s['evaluate']:.0f} s; "
              f"everything {s['total']:.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def dependence_verdict(d: dict[str, Any]) -> str:
    """Plain sentences on how much ABNN's predictions depend on the batch."""
    text = (f"ABNN with batch statistics: clean accuracy {_pct(d['clean_accuracy_batch'])}% in evaluation batches, "
            f"{_pct(d['clean_accuracy_batch_of_1'])}% one image at a time and {_pct(d['clean_accuracy_next_to_one_class'])}% "
            f"next to batch-mates of a single class ({_pct(d['clean_prediction_flips_vs_batch'])}% of predictions flip). "
            f"PGD-8/255 examples crafted on whole batches keep {_pct(d['pgd8_robust_in_attacked_batch'])}% in the attacked "
            f"batch, {_pct(d['pgd8_robust_one_at_a_time'])}% one at a time and {_pct(d['pgd8_robust_among_clean_batch_mates'])}% "
            f"among clean batch-mates; an attacker who controls half of each batch leaves {_pct(d['pgd8_robust_attacker_controls_half_batch'])}%.")  # fmt: skip
    gap = abs(d["clean_accuracy_batch"] - d["clean_accuracy_batch_of_1"])
    if gap > 0.05 or d["clean_prediction_flips_vs_batch"] > 0.05:
        text += " Its predictions depend on the batch: every figure holds for the evaluated batch composition only."
    return text


if __name__ == "__main__":
    sys.exit(main())
