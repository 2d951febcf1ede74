"""Broken defenses of the literature, held-out set: robustkit's adaptive evaluation vs the truth and vs the
official AutoAttack.

    pip install pyautoattack   # the official AutoAttack (Croce & Hein), benchmark only; imported as pyautoattack
    PYTHONPATH=. python benchmarks/broken_defenses.py --n 64 --eps 2/255 --out benchmarks/results/broken_defenses.json

For each case of ``robustkit.defenses.broken.HELD_OUT`` (JPEG, Gaussian noise, tanh head, batch
standardization, and the plain and PGD-AT controls) on the ``shapes-resnet`` zoo model and ``--n`` shapes
test images at L-inf ``--eps``:

1. ``truth``: ``broken.truth`` (our own strongest adaptive attack, judged on the deployed defense);
2. ``adaptive``: ``robustkit.evaluate(as_defense(model, capabilities=...), (x, y), suite)`` with the flags a
   researcher declares: its robust accuracy, within 5 points of the truth?, and its seconds;
3. ``unflagged``: the same evaluation of the bare model: which findings fire (every broken defense must be
   flagged, the controls must stay quiet);
4. ``official``: the official AutoAttack ``standard`` (and ``rand`` for the randomized defense) on the same
   model and data, its adversarial examples judged on the deployed defense (a random one: the mean over
   ``--draws`` fresh draws); robust accuracy and seconds;
5. ``rand_timing`` (randomized case): robustkit's ``autoattack`` in the version a stochastic defense gets
   (``rand``: APGD-CE and APGD-DLR, 20 EOT draws) vs the official ``rand`` on the same model and data,
   timed back to back; target: robustkit / official <= 1.5.

The suite is AutoAttack standard at ``--eps``; ``--steps`` and ``--queries`` shrink the APGD/FAB
iterations and Square's queries of both robustkit and the official AutoAttack alike (for a CPU run).
A part that fails (for example before the adaptive API is merged) is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import environment  # noqa: E402

TOLERANCE = 0.05
RATIO_TARGET = 1.5


def _suite(args: argparse.Namespace) -> dict[str, Any]:
    entry = {"attack": "autoattack", "version": "standard", "norm": "Linf", "eps": args.eps}
    entry |= {k: v for k, v in (("steps", args.steps), ("queries", args.queries)) if v is not None}
    return {"name": "autoattack-standard", "description": "AutoAttack standard", "attacks": [entry]}


def _accuracy(model, x, y, draws: int) -> float:
    with torch.no_grad():
        return float(torch.stack([(model(x).argmax(1) == y).float() for _ in range(draws)]).mean())


def _attempt(fn, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """``fn()`` timed, or ``before`` (the same part of an earlier run, ``--resume``) when it succeeded."""
    if before and "error" not in before:
        return before
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a part that cannot run yet is recorded, the others go on
        logging.warning("failed: %r", exc)
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
    return out | {"seconds": time.perf_counter() - t0}


def _evaluate(model, x, y, args, capabilities=None) -> dict[str, Any]:
    import robustkit
    from robustkit.defenses.base import as_defense

    target = model if capabilities is None else as_defense(model, name="defense", capabilities=capabilities)
    with tempfile.TemporaryDirectory() as out:
        res = robustkit.evaluate(target, (x, y), _suite(args), num_classes=10, out=out, report=False,
                                 progress=False, seed=0)  # fmt: skip
    fired = [f"{f['name']}: {f['status']}" for f in res.summary["findings"] if f["status"] != "pass"]
    fired += [f"detected {d}" for d in (res.summary.get("defense") or {}).get("detected", [])]
    return {
        "robust_accuracy": res.robust_accuracy,
        "clean_accuracy": res.clean_accuracy,
        "findings_fired": fired,
    }


def _official(model, x, y, args, version: str, draws: int) -> dict[str, Any]:
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=args.eps, norm="Linf", version=version, device=x.device, seed=0)
    if args.steps is not None:
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = args.steps
    if args.queries is not None:
        aa.square.n_queries = args.queries
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return {"robust_accuracy": _accuracy(model, x_adv, y, draws)}


def _robustkit_rand(model, x, y, args, draws: int) -> dict[str, Any]:
    """The attack robustkit runs on a stochastic defense: ``adapt().adapt_attack`` of the standard
    ensemble (the ``rand`` version, 20 EOT draws), called directly."""
    from robustkit.attacks import create_attack
    from robustkit.defenses.adaptive import adapt
    from robustkit.defenses.base import Capabilities, as_defense

    adapted = adapt(as_defense(model, capabilities=Capabilities(stochastic=True)), eot_samples=20)
    fields = {"steps": args.steps} if args.steps is not None else {}
    attack = adapted.adapt_attack(create_attack("autoattack", version="standard", eps=args.eps, **fields))
    x_adv = attack(adapted.model, x, y, generator=torch.Generator(x.device).manual_seed(0)).x_adv
    return {"robust_accuracy": _accuracy(model, x_adv, y, draws), "attack": str(attack.params())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from robustkit.builtin.shapes import shapes
    from robustkit.builtin.zoo import load_zoo_model
    from robustkit.defenses import broken

    device = torch.device(args.device)
    base = load_zoo_model("shapes-resnet", device=device, progress=False).eval()
    data = shapes("test", n=max(args.n, 200))
    x, y = data.x[: args.n].to(device), data.y[: args.n].to(device)
    budget = broken.Budget(steps=args.truth_steps, restarts=args.truth_restarts, targets=args.truth_targets,
                           queries=args.truth_queries,
                           eot=args.truth_eot, draws=args.draws, joint_steps=args.truth_steps)  # fmt: skip
    res: dict[str, Any] = {"environment": environment(device), "args": vars(args), "cases": {}}
    old: dict[str, Any] = {}
    if args.resume and Path(args.out).is_file():  # keep every part an earlier run with these args measured
        earlier = json.loads(Path(args.out).read_text())
        same = {
            k: v for k, v in earlier.get("args", {}).items() if k not in ("cases", "resume", "partial", "out")
        }
        mine = {k: v for k, v in vars(args).items() if k not in ("cases", "resume", "partial", "out")}
        old = earlier.get("cases", {}) if same == mine else {}
    t0 = time.perf_counter()
    for name in args.cases:
        case = broken.HELD_OUT[name]
        torch.manual_seed(0)
        model = case.factory(base)
        draws = args.draws if case.kind == broken.RANDOMIZED else 1
        row: dict[str, Any] = {"kind": case.kind, "capabilities": case.capabilities.as_dict()}
        was = old.get(name, {})
        row["truth"] = _attempt(
            lambda m=model, n=name: broken.truth(n, m, x, y, eps=args.eps, budget=budget).as_dict(),
            was.get("truth"),
        )
        row["adaptive"] = _attempt(lambda m=model, c=case: _evaluate(m, x, y, args, c.capabilities))
        row["unflagged"] = _attempt(lambda m=model: _evaluate(m, x, y, args))
        row["official"] = {
            "standard": _attempt(
                lambda m=model, d=draws: _official(m, x, y, args, "standard", d),
                (was.get("official") or {}).get("standard"),
            )  # fmt: skip
        }
        if case.kind == broken.RANDOMIZED:  # timed back to back in this run, never resumed
            ours = _attempt(lambda m=model, d=draws: _robustkit_rand(m, x, y, args, d))
            theirs = _attempt(lambda m=model, d=draws: _official(m, x, y, args, "rand", d))
            row["official"]["rand"] = theirs
            row["rand_timing"] = {"robustkit": ours, "official": theirs}
            if "seconds" in ours and "seconds" in theirs:
                row["rand_timing"]["ratio"] = ours["seconds"] / theirs["seconds"]
                row["rand_timing"]["target"] = f"<= {RATIO_TARGET}"
        row["verdict"] = _verdict(row, case.kind in broken.BROKEN_KINDS)
        res["cases"][name] = row
        logging.info("%s done at %.0fs: %s", name, time.perf_counter() - t0, row["verdict"])
        if args.partial:  # every finished case on disk, for long runs
            Path(args.partial).write_text(json.dumps(res, indent=2, default=str))
    res["seconds"] = time.perf_counter() - t0
    return res


def _verdict(row: dict[str, Any], is_broken: bool) -> dict[str, Any]:
    truth, ours, bare = row["truth"], row["adaptive"], row["unflagged"]
    out: dict[str, Any] = {}
    if "robust_accuracy" in truth and "robust_accuracy" in ours:
        gap = ours["robust_accuracy"] - truth["robust_accuracy"]
        out |= {"adaptive_minus_truth": gap, "within_5_points": abs(gap) <= TOLERANCE}
    if "findings_fired" in bare:
        out["flagged_without_flags" if is_broken else "control_quiet"] = (
            bool(bare["findings_fired"]) == is_broken
        )
    if "robust_accuracy" in truth and "robust_accuracy" in row["official"]["standard"]:
        out["official_standard_minus_truth"] = (
            row["official"]["standard"]["robust_accuracy"] - truth["robust_accuracy"]
        )
    return out


def _pct(part: dict[str, Any]) -> str:
    if "robust_accuracy" in part:
        return f"{100 * part['robust_accuracy']:.1f}%"
    return "not run: " + str(part.get("error", "-")).split(":")[0] if part else "-"


def table(res: dict[str, Any]) -> str:
    """The Markdown table of ``docs/sanity-checks.md`` from a result JSON."""
    lines = [
        "| case | kind | truth | robustkit, flags declared (within 5 points?) | fired without flags | official AutoAttack "
        "standard | official rand | robustkit rand / official rand time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in res["cases"].items():
        v = row.get("verdict", {})
        within = {True: " (yes)", False: " (no)"}.get(v.get("within_5_points"), "")
        fired = ", ".join(f"`{f}`" for f in row["unflagged"].get("findings_fired") or []) or "none"
        timing = row.get("rand_timing") or {}
        ratio = f"{timing['ratio']:.2f}" if "ratio" in timing else "-"
        lines.append(f"| `{name}` | {row['kind']} | {_pct(row['truth'])} | {_pct(row['adaptive'])}{within} | {fired} "
                     f"| {_pct(row['official']['standard'])} | {_pct(row['official'].get('rand', {}))} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/broken_defenses.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n", type=int, default=64, help="shapes test images")
    p.add_argument("--eps", type=lambda t: float(Fraction(t)), default=2 / 255)
    p.add_argument(
        "--steps", type=int, default=None, help="APGD/FAB iterations of both AutoAttacks (default 100)"
    )
    p.add_argument(
        "--queries", type=int, default=None, help="Square queries of both AutoAttacks (default 5000)"
    )
    p.add_argument("--draws", type=int, default=10, help="fresh draws judging a random defense")
    p.add_argument("--truth-steps", type=int, default=100)
    p.add_argument("--truth-restarts", type=int, default=2)
    p.add_argument("--truth-targets", type=int, default=9)
    p.add_argument("--truth-queries", type=int, default=1000)
    p.add_argument("--truth-eot", type=int, default=40)
    p.add_argument("--partial", default=None, help="write the JSON after every case to this path")
    p.add_argument("--resume", action="store_true", help="reuse the truth and official-standard figures of --out "
                   "measured with the same arguments (robustkit's own figures and the timing always rerun)")  # fmt: skip
    p.add_argument("--cases", default="jpeg,gaussian-noise,tanh-head,batch-standardize,plain,pgd-at")
    p.add_argument("--table", action="store_true", help="print the Markdown table of --out and stop")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args)
    for name, row in res["cases"].items():
        print(f"{name:18s} truth {row['truth'].get('robust_accuracy')} adaptive {row['adaptive'].get('robust_accuracy', row['adaptive'].get('error'))} "
              f"unflagged fired {row['unflagged'].get('findings_fired')} official {row['official']['standard'].get('robust_accuracy')} "
              f"{row['verdict']} {row.get('rand_timing', {}).get('ratio', '')}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(table(res))
    print(f"total {res['seconds']:.0f}s; JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
