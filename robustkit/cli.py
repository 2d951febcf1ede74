"""The ``robustkit`` command. Thin: parse arguments, call the Python API, map errors to exit codes.

Exit codes: 0 success, 2 bad input or configuration (a one-paragraph message, no traceback unless
--debug), 1 internal error, 130 interrupted (the run can be resumed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .errors import RobustkitError
from .version import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate_defenses, run
    from .device import resolve_device
    from .errors import ConfigError
    from .evaluation.config import RunConfig
    from .evaluation.defended import is_factory, resolve_defense, split_defenses

    config = RunConfig.from_cli(args)
    card = getattr(args, "model_card", None)
    if card and not any(e.attack_key == "autoattack" for e in config.suite.entries):
        raise ConfigError(
            f"--model-card reports AutoAttack's robust accuracy; suite '{config.suite.name}' has no autoattack "
            "attack: use --suite autoattack-standard"
        )
    if not args.defense:
        result = run(config)
        _print_summary(result)
        if card:
            from .report.modelcard import write_model_card

            print(f"model card: {write_model_card(result.summary, card)}")
        return 0
    if card:
        raise ConfigError("--model-card writes one model's entry: drop --defense, or drop --model-card")
    if args.model or args.weights or args.pretrained or args.normalize:
        raise ConfigError(
            "--defense builds its own models: drop --model/--weights/--pretrained/--normalize, or drop --defense"
        )
    specs = split_defenses(args.defense)
    if len(specs) == 1 and is_factory(specs[0]):  # the user's own defense: one run, as with --model
        data = config.data if isinstance(config.data, str) else "shapes"
        dev = resolve_device(config.device)
        defense = resolve_defense(specs[0], dataset=data, device=dev, progress=config.progress)
        _print_summary(run(config.replace(model=defense, device=dev)))
        return 0
    results, report = evaluate_defenses(specs, config=config)
    for result in results:
        print(f"== defense {result.summary['model']}")
        _print_summary(result)
    if report:
        print(f"comparison: {report}")
    return 0


def _print_summary(result) -> None:
    s = result.summary
    print(f"clean accuracy   {100 * s['clean_accuracy']:.1f}%  ({s['n_samples']} samples)")
    for a in s["attacks"]:
        print(f"  {a['name']:<28} robust {100 * a['robust_accuracy']:5.1f}%   {a['seconds']:.1f}s")
    print(f"robust accuracy  {100 * s['robust_accuracy']:.1f}%  (worst case over the suite)")
    if "profile" in s:
        from .evaluation.profile import format_profile

        print(format_profile(s["profile"]))
    print(f"results: {result.run_dir}")
    if result.report:
        print(f"report:  {result.report}")


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report

    out = args.out or f"{args.runs[0]}/report.html"
    path = render_report(args.runs, out)
    print(f"report: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .report.export import export_run

    done = export_run(args.run, args.out, dpi=args.dpi, size_cm=args.size_cm, sheet=not args.no_pdf)
    for art, png in zip(done.artefacts, done.pngs, strict=True):
        print(f"{png}  {art.width_cm:.2f} x {art.height_cm:.2f} cm at {art.dpi:.1f} dpi")
    if done.pdf:
        print(f"print sheet: {done.pdf} (print at 100%, check the scale bar)")
    return 0


def _cmd_palette(args: argparse.Namespace) -> int:
    from .report.export import chart_palette

    pal = chart_palette(args.chart, args.grid, args.out, inner=args.inner)
    print(f"{args.out}: {pal.shape[0]} printable colours (use it as `palette: {args.out}` in a recipe)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .files import cache_root, cached_json

    names = cached_json(cache_root() / "catalogue.json", _catalogue_stamp(), _catalogue)
    print("attacks:  " + ", ".join(names["attacks"]))
    print("suites:   " + ", ".join(names["suites"]))
    print(
        "datasets: "
        + ", ".join(names["datasets"])
        + " (built-in); "
        + ", ".join(names["manifests"])
        + " (manifests)"
    )
    print("models:   " + ", ".join(names["models"]) + " (zoo)")
    print("defenses: " + ", ".join(names["defenses"]))
    return 0


def _catalogue() -> dict[str, list[str]]:
    from .api import catalogue

    return catalogue()


def _catalogue_stamp() -> str:
    """What the names of ``robustkit list`` are computed from: robustkit's modules and the recipe and
    manifest files. While it is unchanged, ``list`` reads the cached names and imports no torch."""
    from importlib import resources
    from pathlib import Path

    from .files import files_stamp

    files = list(Path(__file__).parent.rglob("*.py"))
    for package in ("robustkit.recipes", "robustkit.manifests"):
        files += Path(str(resources.files(package))).glob("*.yaml")
    return files_stamp(files, __version__)


# the ``train`` options passed to ``train_defense`` under their own names (with every OVERRIDABLE setting)
_TRAIN_OPTIONS = ("seed", "init", "device", "checkpoint_every", "data_root")


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from .defenses.base import DEFENSES
    from .defenses.loading import train_defense
    from .errors import ConfigError
    from .training.settings import OVERRIDABLE

    if args.list:
        for name in DEFENSES.names():
            recipe = DEFENSES.create(name)
            view = f" [view of {recipe.weights_of}]" if recipe.weights_of else ""
            print(f"{name:18s}{view} {recipe.description}")
        return 0
    if not args.out:
        raise ConfigError("train: --out DIR is required (checkpoints and the trained model go there)")
    options = {k: getattr(args, k) for k in (*_TRAIN_OPTIONS, *OVERRIDABLE)}
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone logs and prints
    if not main_process:
        logging.getLogger("robustkit").setLevel(logging.WARNING)
    info = train_defense(
        args.defense,
        args.data,
        out_dir=args.out,
        resume=not args.no_resume,
        progress=not args.no_progress and main_process,
        **options,
    )
    if not main_process:
        return 0
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
        "processes": info.get("processes", 1),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


# TrainSettings' allowed values (robustkit.training.settings; a test keeps them equal), spelled here so
# that building the parser imports nothing heavy
TRAIN_CHOICES = {
    "schedule": ("linear", "cosine"),
    "augment": ("none", "flip", "flip-crop"),
    "amp": ("none", "bf16", "fp16"),
    "attack_mode": ("train", "eval"),
}


def _add_train_arguments(tr: argparse.ArgumentParser) -> None:
    tr.add_argument(
        "--defense", default="standard", help="defense recipe to train (default: standard; see --list)"
    )
    tr.add_argument(
        "--data",
        default="shapes",
        help="built-in dataset, manifest name or manifest path (image folder, GTSRB CSV, UCF-101/HMDB-51 "
        "video, CIFAR-10 ...; default: shapes)",
    )
    tr.add_argument("--data-root", default=None, help="override the manifest's root directory")
    tr.add_argument("--out", help="output directory: checkpoints, model.safetensors and model.json")
    tr.add_argument(
        "--arch",
        default=None,
        help="the network: small-resnet, torchvision:NAME, timm:NAME, video:NAME or package.module:function "
        "(called with num_classes=, in_ch=; default: the recipe's). Stored with the weights",
    )
    tr.add_argument("--width", type=_positive_int, default=None, help="small-resnet base width")
    tr.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: the recipe's)")
    tr.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="global batch size (under torchrun split evenly across the processes; default: the recipe's)",
    )
    tr.add_argument(
        "--train-size", type=_positive_int, default=None, help="use only the first N training samples"
    )
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    tr.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="sgd (momentum 0.9) or adam")
    tr.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum for sgd (default: on)",
    )
    tr.add_argument("--weight-decay", type=_non_negative_float, default=None, help="weight decay (L2)")
    choice_help = {
        "schedule": "after the warm-up: linear or cosine decay to 0",
        "augment": "random horizontal flip, or flip and random crop with 4-pixel padding (same on every frame)",
        "amp": "mixed precision of the training step (fp16 needs CUDA)",
        "attack_mode": "the mode the model is in while adversarial training's inner attack runs",
    }
    for key in ("schedule",):
        tr.add_argument(
            f"--{key.replace('_', '-')}", choices=TRAIN_CHOICES[key], default=None, help=choice_help[key]
        )
    tr.add_argument(
        "--warmup",
        type=_fraction,
        default=None,
        help="fraction of the steps with a linear learning-rate ramp",
    )
    tr.add_argument("--label-smoothing", type=_fraction, default=None, help="label smoothing in [0, 1)")
    tr.add_argument(
        "--drop-path", type=_fraction, default=None, help="stochastic depth rate (timm architectures)"
    )
    for key in ("augment", "amp", "attack_mode"):
        tr.add_argument(
            f"--{key.replace('_', '-')}", choices=TRAIN_CHOICES[key], default=None, help=choice_help[key]
        )
    tr.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="also checkpoint every N steps within an epoch (default: every 10 minutes)",
    )
    tr.add_argument(
        "--init",
        default=None,
        help="weights to start from: the trained network for bn-finetune, the substitute for abnn",
    )
    tr.add_argument("--seed", type=int, default=0, help="seed of data order and attack random starts")
    tr.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N (default: auto; torchrun: cuda:LOCAL_RANK)",
    )
    tr.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--list", action="store_true", help="list the defense recipes and exit")
    tr.set_defaults(func=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robustkit", description="Adversarial robustness evaluation for image and video classifiers."
    )
    p.add_argument("--version", action="version", version=f"robustkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command")

    ev = sub.add_parser("evaluate", help="run an attack suite against a model and write a report")
    ev.add_argument(
        "--model",
        default=None,
        help="zoo name; torchvision/timm architecture (torchvision:NAME, timm:NAME) with --weights or "
        "--pretrained; robustbench:<dataset>/<threat>/<name> (RobustBench's model zoo); or "
        "package.module:function, the module found in the current directory too (default: the zoo model for --data)",
    )
    ev.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        metavar="WEIGHTS",
        help="the architecture's pretrained weights from its library's registry and cache (torch.hub for "
        "torchvision, the Hugging Face hub for timm); WEIGHTS names other weights than the default "
        "(torchvision: IMAGENET1K_V1; timm: a tag such as a1_in1k)",
    )
    ev.add_argument(
        "--normalize",
        default=None,
        metavar="SPEC",
        help="the model's input normalization: imagenet, none, MEAN,STD or M1,M2,M3,S1,S2,S3 (default: the "
        "architecture's own metadata, timm's pretrained_cfg or torchvision's weights; none for robustkit's zoo, "
        "RobustBench's and your own models)",
    )
    ev.add_argument(
        "--model-card",
        default=None,
        metavar="FILE",
        help="also write the results as a RobustBench model-card JSON (a leaderboard entry; needs an AutoAttack "
        "suite such as autoattack-standard)",
    )
    ev.add_argument(
        "--weights",
        default=None,
        help="weights file (.safetensors or a state dict; loaded with weights_only=True)",
    )
    ev.add_argument(
        "--data",
        default="shapes",
        help="built-in dataset, manifest name in datasets/, manifest path, or a folder with one sub-folder of "
        "images (or videos) per class (default: shapes)",
    )
    ev.add_argument("--data-root", default=None, help="override the manifest's root directory")
    ev.add_argument(
        "--suite", default="quick", help="built-in recipe name or path to a recipe .yaml (default: quick)"
    )
    ev.add_argument(
        "--out", default="reports", help="parent directory of the run directory (default: reports)"
    )
    ev.add_argument(
        "--name",
        default=None,
        help="run name (default: <model>-<data>-<suite>); an existing run with the same configuration resumes",
    )
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ev.add_argument("--batch-size", type=_positive_int, default=128)
    ev.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N samples")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads torch may use (default: torch's, one per core); fewer leave cores to other work",
    )
    ev.add_argument(
        "--overwrite", action="store_true", help="start over when the run directory holds a different run"
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument(
        "--defense",
        default=None,
        help="your own defense, package.module:function (a factory returning an nn.Module or a robustkit "
        "Defense, evaluated in the mode it returns it), or comma-separated defense names (see `robustkit "
        "list`; name:weights.safetensors for a checkpoint): each is evaluated under the suite and compared",
    )
    ev.add_argument(
        "--stochastic",
        action="store_true",
        help="declare the model random: EOT inside the gradient attacks, verdict over fresh draws",
    )
    ev.add_argument(
        "--batch-dependent",
        action="store_true",
        help="declare that a sample's output depends on its batch mates: attacked in every batch view, "
        "the worst reported (BatchNorm in train mode is detected without it)",
    )
    ev.add_argument(
        "--bpda",
        action="append",
        default=None,
        metavar="NAME",
        help="a non-differentiable submodule of the model (as model.named_modules() names it), attacked "
        "with BPDA; repeatable. Wrap an inline step in an nn.Module to name it",
    )
    ev.add_argument(
        "--eot-samples",
        type=_positive_int,
        default=20,
        help="draws averaged per gradient step when attacking a stochastic model (default: 20)",
    )
    ev.add_argument(
        "--draws",
        type=_positive_int,
        default=10,
        help="fresh draws a stochastic model's verdict is judged over (at least 10; default: 10)",
    )
    ev.add_argument(
        "--eps",
        default=None,
        metavar="VALUE",
        help="run every attack of the suite at this eps instead of the recipe's (8/255 or 0.03); "
        "entries are named <attack>@<eps>",
    )
    ev.add_argument(
        "--channels-last", action="store_true", help="attacks run the model in channels_last memory format"
    )
    ev.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="BACKEND",
        help="attacks run the model through torch.compile (default backend: inductor)",
    )
    ev.add_argument(
        "--amp",
        choices=["none", "bf16"],
        default=None,
        help="attacks run under bf16 autocast; every success is rechecked in fp32 (default: none)",
    )
    ev.add_argument(
        "--fold-bn",
        action="store_true",
        help="attacks run a copy of the model with eval-mode BatchNorm folded into the convolutions "
        "(the same function up to rounding; every success is rechecked with the model itself)",
    )
    ev.add_argument(
        "--profile", action="store_true", help="report time per attack and forward/backward pass counts"
    )
    ev.set_defaults(func=_cmd_evaluate)

    _add_train_arguments(
        sub.add_parser(
            "train", help="train a model or a defense (standard, pgd-at, abnn, nofrost, bn-finetune, ...)"
        )
    )

    rp = sub.add_parser("report", help="render the HTML report of one run, or a comparison of several")
    rp.add_argument("runs", nargs="+", help="run directories")
    rp.add_argument("--out", default=None, help="output HTML file (default: <first run>/report.html)")
    rp.set_defaults(func=_cmd_report)

    ex = sub.add_parser(
        "export",
        help="write a run's artefacts as PNGs at physical size (DPI) and a true-size print sheet PDF",
    )
    ex.add_argument("run", help="run directory")
    ex.add_argument(
        "--out", default=None, help="output folder inside the run directory (default: RUN/export)"
    )
    size = ex.add_mutually_exclusive_group()
    size.add_argument("--dpi", type=float, default=None, help="print resolution: one pixel is 1/DPI inch")
    size.add_argument("--size-cm", type=float, default=None, help="printed width of every artefact in cm")
    ex.add_argument("--no-pdf", action="store_true", help="write the PNGs only, no print sheet")
    ex.set_defaults(func=_cmd_export)

    pa = sub.add_parser("palette", help="measure a printable palette from a photo of a printed colour chart")
    pa.add_argument("chart", help="photo of the chart, cropped to its grid of swatches")
    pa.add_argument("--grid", required=True, help="ROWSxCOLS swatches, e.g. 5x6")
    pa.add_argument("--out", default="palette.txt", help="palette file to write (default: palette.txt)")
    pa.add_argument("--inner", type=float, default=0.5, help="sampled fraction of each cell (default 0.5)")
    pa.set_defaults(func=_cmd_palette)

    ls = sub.add_parser("list", help="list attacks, suites, datasets and zoo models")
    ls.set_defaults(func=_cmd_list)
    return p


# what Ctrl-C leaves, per command; an interrupted training says what it saved on its own line above
_INTERRUPTED = {
    "evaluate": "every evaluated batch is saved; run the same command again to resume (a model or "
    "defense interrupted in training: the line above says what of it was saved)",
    "train": "what was saved, if anything, is said above",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # robustkit's own progress lines (resuming, already complete, training on first use) at the default level
    logging.getLogger("robustkit").setLevel(logging.DEBUG if args.debug else logging.INFO)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_INTERRUPTED.get(args.command, 'nothing was saved')}", file=sys.stderr)
        return 130
    except (RobustkitError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"robustkit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        print(f"robustkit: error: {exc} (disk full or not writable?)", file=sys.stderr)
        return 2
    except Exception as exc:  # an internal error: say so, exit 1
        if args.debug:
            raise
        print(
            f"robustkit: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
