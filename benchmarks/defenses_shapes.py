"""Train every defense backend at reduced scale on the built-in ``shapes`` data and compare them under PGD.

One command (about 10-15 minutes on two free CPU cores; much longer on a loaded machine):

    PYTHONPATH=. python benchmarks/defenses_shapes.py --out reports/defenses-shapes

    --quick    smoke test: 256 training images, 1 epoch, 100 test images (about a minute)

The defenses are trained with their registered recipes (the reduced-scale defaults, see
``robustkit train --list``) through the same cache ``load_defense`` uses, so a later
``robustkit evaluate --defense pgd-at,abnn,...`` reuses these weights; re-running resumes or skips training.
Evaluation: the first ``--n-eval`` test images in fixed batches of ``--eval-batch``, L-inf PGD-10 (random
start, step 2.5 eps / 10) at 2/255 and 8/255; robust = clean-correct and still correct when the final
adversarial batch is re-evaluated in eval mode. ABNN is attacked white-box through both networks, with
target-only gradients and by transfer from the standard network, and its batch dependence is measured.
Writes ``results.json`` and ``table.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.attacks.pgd import PGD
from robustkit.defenses.backbones import DataSpec
from robustkit.defenses.base import DEFENSES, Context
from robustkit.defenses.checkpoints import load_weights
from robustkit.defenses.train import cache_path, load_split, train_defense
from robustkit.device import resolve_device
from robustkit.evaluate.compare import compare, format_table
from robustkit.functional.random import sample_generators

TRAINED = ["standard", "abnn", "abnn-per-sample", "pgd-at", "nofrost", "bn-at", "bn-finetune", "bn-random"]
EVALUATED = ["standard", "pgd-at", "abnn", "abnn-target-only", "abnn-transfer", "abnn-per-sample",
             "nofrost", "bn-at", "bn-finetune", "bn-random"]  # fmt: skip
EPS = {"2/255": 2 / 255, "8/255": 8 / 255}


class Bench:
    """Trains (or finds) every defense and builds its evaluation model."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.quick = args.quick
        self.work = Path(args.out) / "quick-models" if args.quick else None
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
        if recipe.view is not None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/defenses-shapes")
    parser.add_argument("--quick", action="store_true", help="smoke test at tiny scale")
    parser.add_argument("--n-eval", type=int, default=None, help="test images (default 500, quick 100)")
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps at evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_eval = args.n_eval or (100 if args.quick else 500)
    if args.quick:
        args.eval_batch = min(args.eval_batch, 50)
    device = resolve_device(args.device)
    started = time.perf_counter()
    bench = Bench(args, device)
    for name in TRAINED:
        logging.info("training / loading %s", name)
        bench.trained(name)
    trained_at = time.perf_counter()

    test = load_split("shapes", "test", n_eval)
    x, y = test.x.to(device), test.y.to(device)
    other = load_split("shapes", "holdout", 10 * args.eval_batch).x.to(device)[::10]  # all class 0 (circles)
    results: dict[str, Any] = {}
    summaries = []
    abnn_adv8 = None
    for name in EVALUATED:
        model, info = bench.evaluated(name)
        recipe = DEFENSES.create(name)
        t0 = time.perf_counter()
        clean_pred = predict(model, x, args.eval_batch)
        clean_ok = clean_pred == y
        robust: dict[str, float] = {}
        for label, eps in EPS.items():
            adv, pred = attack_all(model, x, y, eps, args.steps, args.eval_batch, args.seed)
            robust[f"pgd-{label}"] = float((clean_ok & (pred == y)).float().mean())
            if name == "abnn" and label == "8/255":
                abnn_adv8 = (adv, clean_ok)
        entry = {
            "defense": name,
            "trained_as": recipe.trained_recipe().name,
            "n_samples": n_eval,
            "clean_accuracy": float(clean_ok.float().mean()),
            "attacks": robust,
            "capabilities": recipe.capabilities.as_dict(),
            "training_cost": info["cost"],
            "clean_test_accuracy_at_training": info["clean_test_accuracy"],
            "training_settings": info["settings"],
            "training_seconds": info["cost"]["seconds_per_step"] * info["cost"]["steps"],
            "published": recipe.published,
            "paper": recipe.paper,
            "eval_seconds": time.perf_counter() - t0,
        }
        results[name] = entry
        summaries.append(entry)
        logging.info("%s: clean %.3f, robust %s", name, entry["clean_accuracy"], robust)

    dependence = {}
    for name in ("abnn", "abnn-per-sample"):
        model, _ = bench.evaluated(name)
        if name == "abnn" and abnn_adv8 is not None:
            adv8, ok = abnn_adv8
        else:
            adv8, _ = attack_all(model, x, y, 8 / 255, args.steps, args.eval_batch, args.seed)
            ok = predict(model, x, args.eval_batch) == y
        dependence[name] = batch_dependence(model, x, y, adv8, ok, args, other)
    table = compare(summaries)
    full, ft, rnd = (results[k]["attacks"]["pgd-8/255"] for k in ("pgd-at", "bn-finetune", "bn-random"))
    full2, ft2, rnd2 = (results[k]["attacks"]["pgd-2/255"] for k in ("pgd-at", "bn-finetune", "bn-random"))
    report = {
        "protocol": {
            "dataset": "shapes",
            "n_eval": n_eval,
            "eval_batch": args.eval_batch,
            "pgd_steps": args.steps,
            "eps": list(EPS),
            "seed": args.seed,
            "quick": args.quick,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "defenses": results,
        "comparison": table,
        "batch_dependence": dependence,
        "bn_ordering": {
            "pgd-8/255": {"full_at": full, "bn_finetune": ft, "bn_random": rnd, "holds": full > ft > rnd},
            "pgd-2/255": {
                "full_at": full2,
                "bn_finetune": ft2,
                "bn_random": rnd2,
                "holds": full2 > ft2 > rnd2,
            },
        },
        "seconds": {"train_or_load": trained_at - started, "total": time.perf_counter() - started},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    text = render(report)
    (out / "table.md").write_text(text)
    print(text)
    return 0


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def render(report: dict[str, Any]) -> str:
    """The Markdown note: measured table, published anchors, ABNN variants, batch dependence, BN ordering."""
    p = report["protocol"]
    lines = [
        f"# Defenses on shapes (reduced scale{', QUICK smoke test' if p['quick'] else ''})",
        "",
        f"{p['n_eval']} test images, batches of {p['eval_batch']}, L-inf PGD-{p['pgd_steps']} at "
        f"{' and '.join(p['eps'])}; device {p['device']}, {p['threads']} threads, torch {p['torch']}.",
        "",
        "## Measured (accuracy %, training cost per step relative to standard training)",
        "",
        format_table(report["comparison"]),
        "",
    ]
    lines += [
        "## Published anchors (full scale; compare ordering and ratios, not absolute numbers)",
        "",
        "| defense | source | clean | PGD | training cost (passes) |",
        "|---|---|---|---|---|",
    ]
    for name, d in report["defenses"].items():
        pub = d.get("published") or {}
        if "clean" in pub or "pgd" in pub or "training_cost_passes" in pub:
            cost = pub.get("training_cost_passes")
            lines.append(
                f"| {name} | {pub.get('dataset', '')} | {_pct(pub.get('clean'))} | {_pct(pub.get('pgd'))} | "
                f"{'-' if cost is None else f'{cost}N'} |"
            )
    d = report["defenses"]
    lines += [
        "",
        "## ABNN under three attacks (PGD 8/255 robust accuracy %)",
        "",
        "| white-box (both networks) | target-only gradients | transfer from standard |",
        "|---|---|---|",
        f"| {_pct(d['abnn']['attacks']['pgd-8/255'])} | {_pct(d['abnn-target-only']['attacks']['pgd-8/255'])} | "
        f"{_pct(d['abnn-transfer']['attacks']['pgd-8/255'])} |",
        "",
    ]
    lines += [
        "## Batch dependence (accuracy %)",
        "",
        "| measurement | abnn (batch statistics) | abnn-per-sample |",
        "|---|---|---|",
    ]
    dep = report["batch_dependence"]
    for key in dep["abnn"]:
        lines.append(
            f"| {key.replace('_', ' ')} | {_pct(dep['abnn'][key])} | {_pct(dep['abnn-per-sample'].get(key))} |"
        )
    o = report["bn_ordering"]
    lines += ["", "## BN-only fine-tuning ordering (full AT > BN-only fine-tuning > BN-only from random)", ""]
    for eps, v in o.items():
        lines.append(
            f"- {eps}: full AT {_pct(v['full_at'])}, BN-only fine-tuning {_pct(v['bn_finetune'])}, "
            f"BN-only from random {_pct(v['bn_random'])}: ordering {'holds' if v['holds'] else 'does NOT hold'}."
        )
    notes = report["comparison"]["notes"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    s = report["seconds"]
    lines += ["", f"Training/loading took {s['train_or_load']:.0f} s; everything {s['total']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
