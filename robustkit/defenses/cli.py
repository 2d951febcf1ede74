"""``robustkit train``: the arguments and the handler the main CLI mounts as a subcommand.

robustkit train --defense pgd-at --data shapes --epochs 6 --out runs/pgd-at
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .base import DEFENSES

log = logging.getLogger(__name__)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser`` (a subparser of the main CLI, or a standalone parser)."""
    parser.add_argument("--defense", help="registered defense recipe to train (see --list)")
    parser.add_argument(
        "--data", default="shapes", help="built-in dataset, manifest name or manifest path (default: shapes)"
    )
    parser.add_argument("--out", help="output directory: checkpoints, model.safetensors and model.json")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training samples")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument(
        "--init",
        default=None,
        help="weights to start from: the trained network for bn-finetune, the substitute for abnn",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data order and attack random starts")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if --out holds a checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the defense recipes and exit")
    return parser


def list_defenses() -> str:
    lines = []
    for name in DEFENSES.names():
        recipe = DEFENSES.create(name)
        view = f" [view of {recipe.weights_of}]" if recipe.weights_of else ""
        lines.append(f"{name:18s}{view} {recipe.description}")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    """Run ``robustkit train``; returns the exit code (errors propagate as robustkit's typed errors)."""
    from ..errors import ConfigError
    from .train import train_defense

    if args.list:
        print(list_defenses())
        return 0
    if not args.defense:
        raise ConfigError("train: --defense is required (one of " + ", ".join(DEFENSES.names()) + ")")
    if not args.out:
        raise ConfigError("train: --out DIR is required (checkpoints and the trained model go there)")
    info = train_defense(
        args.defense,
        args.data,
        out_dir=args.out,
        epochs=args.epochs,
        device=args.device,
        resume=not args.no_resume,
        progress=not args.no_progress,
        train_size=args.train_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        init=args.init,
    )
    cost = info.get("cost", {})
    summary = {
        "defense": info.get("recipe"),
        "data": info.get("dataset"),
        "weights": info.get("weights"),
        "clean_test_accuracy": info.get("clean_test_accuracy"),
        "passes_per_step": cost.get("passes_per_step", {}).get("total"),
        "seconds_per_step": cost.get("seconds_per_step"),
        "relative_cost_passes": cost.get("relative_passes"),
        "relative_cost_seconds": cost.get("relative_seconds"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m robustkit.defenses.cli ...``."""
    parser = add_train_arguments(
        argparse.ArgumentParser(prog="robustkit train", description=__doc__.splitlines()[0])
    )
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except ValueError as exc:  # robustkit's typed errors are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
