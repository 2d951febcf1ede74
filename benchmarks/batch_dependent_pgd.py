"""PGD on a batch-dependent defense (ABNN with batch statistics): what the attack claims and what its
adversarial batch gets when it is classified as one batch, next to ART's PGD on the same batches.

A batch-dependent model classifies each image with its batch-mates, so the one honest figure is the
accuracy of the final adversarial batch classified together. robustkit's PGD keeps (per-sample mode)
or holds (``batch_dependent`` precisions, as the runner passes them) each image at the step it broke;
its batch-mates keep moving, so an image can be broken when it is held and not in the final batch. The
table shows, per mode, the robust accuracy the attack claims (``~success``) and the final batch's.

    PYTHONPATH=. python benchmarks/batch_dependent_pgd.py --out benchmarks/results/batch_dependent_pgd.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent

import robustkit.art as rka
from robustkit.attacks import create_attack
from robustkit.builtin.shapes import shapes
from robustkit.defenses.loading import load_defense
from robustkit.functional.random import sample_generators
from robustkit.models.fastpath import Precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", default="abnn-batch")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--eps", type=float, default=2 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    defense = load_defense(args.defense, dataset="shapes", progress=False)
    data = shapes("test", n=args.n)
    x, y = data.x, data.y
    model = defense.model.eval()
    step = args.eps / 4
    est = rka.to_estimator(defense, input_shape=tuple(x.shape[1:]))
    art_pgd = ProjectedGradientDescent(est, eps=args.eps, eps_step=step, max_iter=args.steps, num_random_init=0,
                                       batch_size=args.batch, verbose=False)  # fmt: skip
    x_art = art_pgd.generate(x.numpy(), y.numpy())
    art = float(np.mean(est.predict(x_art, batch_size=args.batch).argmax(1) == y.numpy()))
    rows = [{"attack": "ART PGD", "claimed": None, "final_batch": art}]
    pgd = create_attack("pgd", eps=args.eps, steps=args.steps, step_size=step, random_start=False)
    for mode in ("per-sample", "batch_dependent"):
        claimed = final = 0
        for i in range(0, args.n, args.batch):
            xb, yb = x[i : i + args.batch], y[i : i + args.batch]
            kw = (
                {"precisions": Precisions.single(model, batch_dependent=True)}
                if mode == "batch_dependent"
                else {}
            )
            r = pgd(model, xb, yb, generator=sample_generators(0, range(i, i + len(xb))), **kw)
            with torch.no_grad():
                final += int((model(r.x_adv).argmax(1) == yb).sum())
            claimed += int((~r.success).sum())
        rows.append(
            {"attack": f"robustkit PGD ({mode})", "claimed": claimed / args.n, "final_batch": final / args.n}
        )
    record = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "defense": args.defense, "n": args.n,
              "batch": args.batch, "eps": args.eps, "steps": args.steps, "rows": rows}  # fmt: skip
    for r in rows:
        claimed = "-" if r["claimed"] is None else f"{100 * r['claimed']:.1f}%"
        print(
            f"{r['attack']:36s} claimed robust {claimed:>7s}   final batch robust {100 * r['final_batch']:.1f}%"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
