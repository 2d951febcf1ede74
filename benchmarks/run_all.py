"""Run every performance benchmark of issue 10 in one process, print one table, write JSON.

    nice -n 10 env PYTHONPATH=. python benchmarks/run_all.py --out benchmarks/results/run_all.json

Sections (see each module's docstring for the method):

1. ``overhead``  PGD-Linf, 10 steps, / 10 bare forward+input-gradient passes: CIFAR-size SmallResNet,
                 pytorchvideo's X3D-XS and the small SmallVideoNet video model
                 (``benchmarks/overhead.py``);
2. ``pgd``       robustkit PGD (fp32, and behind the fast path ``--fold-bn --channels-last --amp bf16``) vs ART
                 ProjectedGradientDescent vs torchattacks PGD on the trained ``shapes-resnet`` zoo
                 model, at each ``--eps`` (default 2/255 and the standard 8/255; ``benchmarks/peers.py``);
3. ``ensemble``  the standard ensemble vs torchattacks AutoAttack(version="standard") (``peers.py``);
4. ``patch``     one EOT patch iteration, batch 16 x 8 EOT samples, vs ART AdversarialPatchPyTorch
                 (``benchmarks/patch_step.py``);
5. ``memory``    PGD peak memory / one forward+backward (measured in section 1).

Timings interleave the compared functions round by round after a warm-up (``common.compare``);
medians and (min, max) over rounds; CUDA events on GPU. ``--quick`` shrinks every size for a smoke
run. Targets are checked and printed as ok / MISS; the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import bf16_note, environment, fmt_bytes, table  # noqa: E402
from benchmarks.peers import FAST_ROW  # noqa: E402

TARGETS = {
    "overhead": ("PGD time / bare passes", "<=", 1.10),
    "pgd_vs_art": ("ART PGD time / robustkit", ">=", 3.0),
    "pgd_vs_torchattacks": ("torchattacks PGD time / robustkit", ">=", 1.0),
    "ensemble": ("robustkit ensemble time / torchattacks", "<=", 0.8),
    "patch": ("ART patch iteration / robustkit", ">=", 5.0),
    "memory": ("PGD peak memory / one fwd+bwd", "<=", 1.2),
}


def _eps(text: str) -> float:
    return float(Fraction(text))


def _verdict(key: str, value: float) -> str:
    _, op, bound = TARGETS[key]
    if value != value:  # NaN
        return "-"
    ok = value <= bound if op == "<=" else value >= bound
    return f"ok ({op} {bound:g})" if ok else f"MISS ({op} {bound:g})"


def _shapes(n: int, device: torch.device):
    from robustkit.builtin.shapes import shapes
    from robustkit.builtin.zoo import load_zoo_model

    data = shapes("test", n=n)
    model = load_zoo_model("shapes-resnet", device=device, progress=False).eval()
    return model, data.x[:n].to(device), data.y[:n].to(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import overhead, patch_step, peers

    device = torch.device(args.device)
    res: dict[str, Any] = {"environment": environment(device), "args": vars(args), "sections": {}}
    res["environment"]["bf16"] = bf16_note(device)
    sec = res["sections"]
    t0 = time.perf_counter()
    if "overhead" in args.only:
        cases = [
            overhead.cifar_case(args.batch, device),
            overhead.x3d_case(args.x3d_batch, device),
            overhead.video_case(args.video_batch, device),
        ]
        sec["overhead"] = [overhead.overhead(n, m, x, reps=args.reps) for n, m, x in cases]
        logging.info("overhead done at %.0fs", time.perf_counter() - t0)
    model, x, y = _shapes(max(args.n, args.n_ensemble, 64), device)
    if "pgd" in args.only:
        sec["pgd"] = [
            peers.pgd_vs_peers(model, x[: args.n], y[: args.n], eps=e, reps=args.reps) for e in args.eps
        ]
        logging.info("pgd done at %.0fs", time.perf_counter() - t0)
    if "patch" in args.only:
        sec["patch"] = patch_step.patch_step(model, x, y, iters=args.patch_iters, reps=args.reps)
        logging.info("patch done at %.0fs", time.perf_counter() - t0)
    if "ensemble" in args.only:
        m = args.n_ensemble
        sec["ensemble"] = peers.ensemble_vs_torchattacks(
            model,
            x[:m],
            y[:m],
            eps=args.eps_ensemble,
            k=10,
            steps=args.ensemble_steps,
            reps=args.ensemble_reps,
        )
        logging.info("ensemble done at %.0fs", time.perf_counter() - t0)
    res["seconds"] = time.perf_counter() - t0
    res["table"] = rows(res)
    return res


def rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary table: one row per measured figure, with its target verdict."""
    out: list[dict[str, Any]] = []
    sec = res["sections"]

    def add(
        section: str, what: str, value: float, spread=None, target: str | None = None, note: str = ""
    ) -> None:
        lo, hi = spread if spread else (None, None)
        out.append({"section": section, "figure": what, "value": value, "min": lo, "max": hi,
                    "target": _verdict(target, value) if target else "", "note": note})  # fmt: skip

    for case in sec.get("overhead", []):
        r = case["overhead_ratio"]
        c = case["counters"]
        work = f"batch {case['batch']}, fwd {c.get('forward')} bwd {c.get('backward')}"
        add("1 overhead", f"PGD-10 / 10 bare passes, {case['case']}", r["median"], (r["min"], r["max"]), "overhead",
            f"{work}; pgd {case['pgd']['median_s']:.3f}s, bare {case['bare']['median_s']:.3f}s")  # fmt: skip
    for p in sec.get("pgd", []):
        rk = {r["library"]: r for r in p["rows"]}
        base, fast = rk["robustkit"], rk[FAST_ROW]
        where = f"n={p['n']}, eps={p['eps'] * 255:.0f}/255"
        for ours, ratio_key, label in ((base, "time_ratio_vs_robustkit", "robustkit"),
                                       (fast, "time_ratio_vs_fast_path", "robustkit fast path")):  # fmt: skip
            for r in p["rows"]:
                key = {"ART": "pgd_vs_art", "torchattacks": "pgd_vs_torchattacks"}.get(r["library"])
                if key is None:
                    continue
                tr = r[ratio_key]
                add("2 pgd", f"{r['library']} time / {label}, {where}", tr["median"], (tr["min"], tr["max"]), key,
                    f"{r['median_s']:.3f}s vs {ours['median_s']:.3f}s; robust acc {100 * r['robust_accuracy']:.1f}% "
                    f"vs {100 * ours['robust_accuracy']:.1f}%")  # fmt: skip
        plain = rk["robustkit (no compaction)"]
        tr = plain["time_ratio_vs_robustkit"]
        add("2 pgd", f"no compaction / compaction, {where}", tr["median"], (tr["min"], tr["max"]),
            note=f"robust acc {100 * plain['robust_accuracy']:.1f}% vs {100 * base['robust_accuracy']:.1f}%")  # fmt: skip
        for note in p.get("notes", []):
            add("2 pgd", "torchattacks", float("nan"), note=note)
    if "ensemble" in sec:
        e = sec["ensemble"]
        if "skipped" in e:
            add("3 ensemble", "robustkit / torchattacks AutoAttack", float("nan"), note=e["skipped"])
        else:
            theirs = e["rows"][-1]
            for ours in e["rows"][:-1]:
                tr = ours["time_ratio_vs_torchattacks"]
                add("3 ensemble", f"{ours['library']} standard / torchattacks AutoAttack", tr["median"],
                    (tr["min"], tr["max"]), "ensemble", f"{ours['median_s']:.1f}s vs {theirs['median_s']:.1f}s; "
                    f"robust acc {100 * ours['robust_accuracy']:.1f}% vs {100 * theirs['robust_accuracy']:.1f}%, "
                    f"n={e['n']}, eps={e['eps'] * 255:.0f}/255")  # fmt: skip
    if "patch" in sec:
        pt = sec["patch"]
        s = pt["seconds_per_iteration"]
        for label, key, row in (("robustkit", "speedup_vs_art", "robustkit"),
                                ("robustkit fast path", "speedup_vs_art_fast_path", "robustkit fast path")):  # fmt: skip
            sp = pt[key]
            add("4 patch", f"ART / {label} per iteration, batch {pt['batch']} x {pt['eot_samples']} EOT",
                sp["median"], (sp["min"], sp["max"]), "patch",
                f"{s[row]['median_s']:.3f}s vs {s['ART']['median_s']:.3f}s per iteration; bare fwd+bwd of the "
                f"same rows {s['bare fwd+bwd']['median_s']:.3f}s")  # fmt: skip
    for case in sec.get("overhead", []):
        add("5 memory", f"PGD peak / one fwd+bwd, {case['case']}", case["memory_ratio"], None, "memory",
            f"{fmt_bytes(case['peak_bytes_pgd'])} vs {fmt_bytes(case['peak_bytes_bare'])}, "
            f"parameter grads left: {case['parameter_grads_left']}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/run_all.json", help="JSON output path")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per comparison")
    p.add_argument(
        "--ensemble-reps", type=int, default=3, help="timed rounds of the (slow) ensemble comparison"
    )
    p.add_argument("--batch", type=int, default=128, help="batch of the CIFAR-size overhead case")
    p.add_argument("--video-batch", type=int, default=16, help="batch of the SmallVideoNet overhead case")
    p.add_argument("--x3d-batch", type=int, default=2, help="batch of the X3D-XS overhead case")
    p.add_argument("--n", type=int, default=256, help="samples for PGD vs ART / torchattacks")
    p.add_argument(
        "--eps",
        type=lambda t: [_eps(e) for e in t.split(",")],
        default=[_eps("2/255"), _eps("8/255")],
        help="comma-separated PGD eps values (default 2/255,8/255)",
    )
    p.add_argument("--n-ensemble", type=int, default=64, help="samples for the ensemble comparison")
    p.add_argument("--eps-ensemble", type=_eps, default=_eps("2/255"))
    p.add_argument(
        "--ensemble-steps",
        type=int,
        default=10,
        help="APGD / APGD-T / FAB-T iterations of robustkit's ensemble: 10 is what torchattacks' "
        "AutoAttack(version='standard') runs (its APGD, APGDT and FAB default to steps=10)",
    )
    p.add_argument("--patch-iters", type=int, default=4, help="patch iterations per timed call")
    p.add_argument("--only", default="overhead,pgd,patch,ensemble", help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.quick:
        args.ensemble_reps = 1
        args.reps, args.batch, args.video_batch, args.x3d_batch, args.n, args.n_ensemble, args.patch_iters = (
            2,
            16,
            4,
            1,
            32,
            8,
            2,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)
    res = run(args)
    cols = ["section", "figure", "value", "min", "max", "target", "note"]
    print(table(res["table"], cols))
    print(f"total {res['seconds']:.0f}s on {res['environment']['device']} "
          f"({res['environment']['threads']} threads, {res['environment']['bf16']}, "
          f"load {res['environment'].get('load_average')})")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(res, argv if argv is not None else sys.argv[1:]))
    print(f"JSON: {out}, table: {out.with_suffix('.md')}")
    return 0


def markdown(res: dict[str, Any], argv: list[str]) -> str:
    """The summary table as Markdown, with the command and the machine it was measured on."""
    env = res["environment"]

    def num(v: Any) -> str:
        return "-" if v is None or v != v else f"{v:.2f}"

    lines = [
        f"`python benchmarks/run_all.py {' '.join(argv)}`: {res['seconds']:.0f} s on {env['device']}, "
        f"{env['threads']} threads, torch {env['torch']}, {env['bf16']}.",
        "",
        "| section | figure | median | min | max | target | details |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["table"]:
        lines.append(f"| {r['section']} | {r['figure']} | {num(r['value'])} | {num(r['min'])} | "
                     f"{num(r['max'])} | {r['target']} | {r['note']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
