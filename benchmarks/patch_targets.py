"""Which target class a universal patch wins most easily: the patch recipe trained once per target class
(and seed) on a zoo model's training split, then pasted at a random placement into held-out images of
the other classes. ``attacks/patch.yaml``'s ``target_class`` is the winner on the built-in shapes model.

    PYTHONPATH=. python benchmarks/patch_targets.py --model shapes-resnet --data shapes --seeds 0 1 \\
        --threads 2 --out benchmarks/results/patch_targets.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import repo_suite
from robustkit.builtin.zoo import load_zoo_model
from robustkit.functional.random import sample_generators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-resnet")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--suite", default="patch")
    parser.add_argument("--targets", type=int, nargs="*", help="target classes (default: every class)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (base,) = [e.attack for e in repo_suite(args.suite).entries if e.attack.name == "patch"][:1]
    model = load_zoo_model(args.model, progress=False).eval()
    dataset = getattr(
        importlib.import_module(f"robustkit.builtin.{args.data}"), args.data
    )  # shapes, signs, faces
    train, test = dataset("train", n=args.train), dataset("test", n=args.test)
    classes = list(getattr(test, "classes", range(int(test.y.max()) + 1)))
    rows = []
    for target in args.targets if args.targets is not None else range(len(classes)):
        attack, runs, start = replace(base, target_class=target), [], time.perf_counter()
        keep = test.y != target
        for seed in args.seeds:
            fitted = attack.fit(model, train.x, train.y, generator=torch.Generator().manual_seed(seed))
            res = fitted(
                model, test.x[keep], test.y[keep], generator=sample_generators(seed, range(int(keep.sum())))
            )
            runs.append(
                (float(res.success.float().mean()), float(res.metrics["placement_success_rate"].mean()))
            )
        row = {
            "target_class": target,
            "name": str(classes[target]),
            "success": statistics.mean(r[0] for r in runs),
            "success_per_seed": [r[0] for r in runs],
            "placement_success": statistics.mean(r[1] for r in runs),
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: -r["success"])
    record = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "model": args.model, "data": args.data,
              "seeds": args.seeds, "held_out": args.test, "rows": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for r in rows:
        print(f"{r['target_class']:3d} {r['name']:15s} {100 * r['success']:5.1f}% ({100 * r['placement_success']:.1f}% "
              f"over placements)")  # fmt: skip


if __name__ == "__main__":
    main()
