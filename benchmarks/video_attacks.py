"""Accuracy of the built-in video model under every attack of a video suite.

Runs each entry of ``attacks/video.yaml`` (or ``--suite``) on the ``shapes-video`` test clips that
the ``shapes-video-r3d`` zoo model classifies correctly, rechecks every adversarial clip with a fresh
eval-mode forward pass, and prints accuracy (over all clips, as the runner reports it), per-frame
perturbation figures and time. Universal attacks (``video-patch``, ``framing-universal``,
``flicker-universal``) are fitted on the train split first (their time includes the training, and the
row its cost), and each is followed by a row for a random perturbation of the same budget (a random
texture, border or +-eps flicker in place of the trained one), the baseline a universal attack must beat.
Each row also has ``margin``: the mean CW margin of the attacked clips (best other logit minus the true
class's; above 0 is fooled), which shows a small effect that accuracy over a few hundred clips hides.
Writes the table as JSON with ``--out`` (the recorded run: benchmarks/results/video_attacks.json);
with ``--update`` the rows of the entries run replace those of the same name in that file, and the
command joins its list. ``--set KEY=VALUE`` runs the entries with a parameter changed (their rows are
named ``NAME [KEY=VALUE]``), e.g. the flicker entries at another L-inf bound.

    PYTHONPATH=. python benchmarks/video_attacks.py --suite attacks/video.yaml --n 200 --threads 1 \
        --out benchmarks/results/video_attacks.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from robustkit.attacks.universal import is_universal
from robustkit.builtin.shapes_video import shapes_video
from robustkit.builtin.zoo import load_zoo_model
from robustkit.evaluation.suite import load_suite
from robustkit.functional.losses import cw_margin
from robustkit.functional.random import sample_generators


def randomized(attack, seed: int):
    """The universal attack with its trained perturbation replaced by a random one of the same budget."""
    g = torch.Generator().manual_seed(seed)
    field = type(attack).trained_field
    trained = getattr(attack, field)
    if field == "flicker":  # every offset at +-eps: the largest a random flicker can be
        noise = (torch.randint(0, 2, trained.shape, generator=g) * 2 - 1).to(trained.dtype) * attack.eps
    else:  # a texture or border: every pixel anywhere in [0, 1]
        noise = torch.rand(trained.shape, generator=g, dtype=trained.dtype)
    return attack.replace(**{field: noise})


def evaluate(model, test, correct, attack, k: int, args) -> dict:
    """Accuracy over all test clips (the misclassified count as broken) and mean per-clip metrics."""
    robust, metrics = 0, {}
    for s in range(0, len(correct), args.batch_size):
        idx = correct[s : s + args.batch_size]
        x, y = test.x[idx], test.y[idx]
        result = attack(model, x, y, generator=sample_generators(args.seed, idx.tolist(), salt=k + 1))
        with torch.no_grad():
            logits = model(result.x_adv)
        robust += int((logits.argmax(1) == y).sum())
        metrics.setdefault("margin", []).append(cw_margin(logits, y))
        for key, value in result.metrics.items():
            metrics.setdefault(key, []).append(value.float())
    m = {key: float(torch.cat(v).mean()) for key, v in metrics.items()}
    return {"robust_accuracy": robust / len(test), **m}


def flicker_sensitivity(model, test, correct) -> dict:
    """How much a flicker can move the model, to first order: the median over the correctly classified
    clips of the margin's gradient summed over each frame's pixels (a flicker's offsets) and over single
    pixels, as the margin change per unit of L-inf bound, and the bound that would flip the median clip."""
    x, y = test.x[correct].clone().requires_grad_(True), test.y[correct]
    margin = -cw_margin(model(x), y)
    (grad,) = torch.autograd.grad(margin.sum(), x)
    flicker, pixels = grad.sum(dim=(3, 4)).abs().flatten(1).sum(1), grad.abs().flatten(1).sum(1)
    margin = margin.detach()
    return {
        "clips": len(correct),
        "median_margin": float(margin.median()),
        "margin_per_linf_flicker": float(flicker.median()),
        "margin_per_linf_pixels": float(pixels.median()),
        "first_order_flip_eps_flicker": float((margin / flicker).median()),
        "first_order_flip_eps_pixels": float((margin / pixels).median()),
    }


def overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs, each value read as YAML (numbers, booleans, strings)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="video")
    parser.add_argument("--n", type=int, default=200, help="test clips")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="entry names to run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--update", action="store_true", help="replace only these rows in --out")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change the entries run")
    parser.add_argument(
        "--sensitivity", action="store_true", help="record the first-order flicker sensitivity"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_zoo_model("shapes-video-r3d")
    test = shapes_video("test", n=args.n)
    with torch.no_grad():
        pred = torch.cat([model(test.x[i : i + 200]).argmax(1) for i in range(0, len(test), 200)])
    correct = (pred == test.y).nonzero()[:, 0]
    clean = len(correct) / len(test)
    print(f"shapes-video-r3d on {len(test)} shapes-video test clips: clean accuracy {clean:.3f}")
    header = f"{'attack':22s} {'acc':>6s} {'linf/frame':>10s} {'l2/frame':>9s} {'frames':>7s} {'pixels':>7s} {'sec':>7s}"
    print(header)
    print("-" * len(header))
    sensitivity = flicker_sensitivity(model, test, correct) if args.sensitivity else None
    if sensitivity:
        print("first-order flicker sensitivity:", json.dumps(sensitivity))
    rows, changed = [], overrides(args.set)
    suffix = f" [{', '.join(args.set)}]" if changed else ""
    for k, entry in enumerate(load_suite(args.suite).entries):
        if args.only and entry.name not in args.only:
            continue
        attack = entry.attack.replace(**changed) if changed else entry.attack
        start = time.perf_counter()
        extra = {}
        if is_universal(attack):
            train = shapes_video("train", n=int(getattr(attack, "train_samples", 256)))
            g = torch.Generator().manual_seed(args.seed * 7919 + k)
            attack = attack.fit(model, train.x, train.y, generator=g)
            extra["training"] = dataclasses.asdict(attack.training_cost)
        runs = [(entry.name + suffix, attack, start, extra)]
        if extra:
            runs.append(
                (f"{entry.name}{suffix} (random, same budget)", randomized(attack, args.seed), None, {})
            )
        for name, fitted, began, more in runs:
            began = began if began is not None else time.perf_counter()
            row = evaluate(model, test, correct, fitted, k, args)
            row = {
                "attack": name,
                "clean_accuracy": clean,
                **row,
                "seconds": time.perf_counter() - began,
                **more,
            }
            rows.append(row)
            print(
                f"{name[:22]:22s} {row['robust_accuracy']:6.3f} {row.get('frame_linf_mean', 0):10.4f} "
                f"{row.get('frame_l2_mean', 0):9.3f} {row.get('frames_changed', 0):7.3f} "
                f"{row.get('pixels_changed', 0):7.3f} {row['seconds']:7.1f}",
                flush=True,
            )
    if args.out:
        command = "PYTHONPATH=. python " + " ".join(sys.argv)
        data = (
            f"shapes-video test clips 0..{len(test) - 1} (seed {args.seed}), shape {tuple(test.x.shape[1:])}"
        )
        record = {
            "command": command,
            "model": "shapes-video-r3d",
            "data": data,
            "suite": args.suite,
            "rows": rows,
        }
        if args.update:
            with open(args.out) as f:
                record = json.load(f)
            if record["data"] != data:
                raise SystemExit(
                    f"--update: {args.out} holds rows on {record['data']}, this run is on {data}"
                )
            new = {row["attack"]: row for row in rows}
            old = [new.pop(row["attack"], row) for row in record["rows"]]  # replaced in place
            record["rows"] = old + list(new.values())
            record["updates"] = [*record.get("updates", []), command]
        if sensitivity:
            record["flicker_sensitivity"] = sensitivity
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
