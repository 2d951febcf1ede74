"""robustkit's universal patch side by side with ART's ``AdversarialPatchPyTorch``.

Same model (a zoo model, default ``signs-resnet``), same data (the built-in dataset of that model),
same patch (circle covering 10% of the image at scale 1, scale 0.9-1.1, rotation up to 22.5 degrees,
targeted at ``--target``), same optimizer (Adam, same learning rate) and the same iteration budget:
one iteration = ``--batch`` images x ``--eot`` random placements = one optimizer step.

ART draws one placement per image per step, so it gets every training image repeated ``--eot``
times and ``batch_size = batch * eot``: both libraries then see the same rows per step. ART's
``scale_min`` / ``scale_max`` are the patch side as a fraction of the image edge; they are set so the
rendered area matches ours (a disk of diameter ``sqrt(0.4 / pi)`` of the edge covers 10%). Model
parameters are frozen for both (robustkit always does this; ART would otherwise also compute their
gradients, which only makes it slower).

Two measurements:

* time per iteration at batch ``--batch`` with ``--eot`` samples: the median of ``--reps`` runs of
  ``--timing-steps`` iterations each, after ``--warmup`` runs, ours / ART ratio;
* effectiveness: both patches trained for ``--steps`` iterations on ``--train`` images (outside the
  target class), then pasted at ``--draws`` random placements (robustkit's sampler, same placements for
  both patches) on ``--test`` held-out images, quantized to 8 bits: the fraction of (image, placement)
  pairs where the target class wins. Each patch is also applied with ART's own ``apply_patch`` (its
  random placement at scale 1) as a cross-check of the renderer.

    PYTHONPATH=. python benchmarks/patch_vs_art.py --out benchmarks/results/patch_vs_art.json

Prints a table and writes everything as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustkit.attacks import create_attack
from robustkit.attacks.physical import quantize
from robustkit.builtin.zoo import ZOO, load_zoo_model
from robustkit.data.synthetic import BUILTIN
from robustkit.functional.placement import sample_placement


def art_attack(model, args, max_iter: int, batch_size: int, shape: tuple[int, int, int], nb_classes: int):
    """ART's AdversarialPatchPyTorch configured like ours (see the module docstring)."""
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    side = math.sqrt(4 * args.size / math.pi)  # circle diameter / image edge for `size` of the area
    return AdversarialPatchPyTorch(
        clf,
        rotation_max=args.rotation,
        scale_min=side * 0.9,
        scale_max=side * 1.1,
        distortion_scale_max=0.0,
        learning_rate=args.lr,
        max_iter=max_iter,
        batch_size=batch_size,
        patch_shape=shape,
        patch_type="circle",
        targeted=True,
        verbose=False,
    )


def ours_attack(args, steps: int):
    return create_attack(
        "patch", patch_type="circle", size=args.size, rotation_max=args.rotation, scale_min=0.9, scale_max=1.1,
        learning_rate=args.lr, max_iter=steps, batch_size=args.batch, train_samples=10**9, targeted=True,
        target_class=args.target, eot={"n_samples": args.eot}, eval_draws=0, eval_grid=False,
    )  # fmt: skip


def train_ours(model, x, y, args, steps: int, seed: int) -> torch.Tensor:
    fitted = ours_attack(args, steps).fit(model, x, y, generator=torch.Generator().manual_seed(seed))
    return fitted.patch


def train_art(model, x, y, args, epochs: int, seed: int, nb_classes: int) -> np.ndarray:
    """ART over ``x`` repeated ``eot`` times with batch ``batch * eot``: ``len(x) / batch`` steps an epoch."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    rows = x.repeat(args.eot, 1, 1, 1).numpy()
    target = np.eye(nb_classes, dtype=np.float32)[np.full(rows.shape[0], args.target)]
    attack = art_attack(model, args, epochs, args.batch * args.eot, tuple(x.shape[1:]), nb_classes)
    patch, _ = attack.generate(rows, target)
    return patch


def timed(fns: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    """Wall time of each function, interleaved run by run so that all of them see the same machine load."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                out[key].append(time.perf_counter() - t)
    return out


def hit_rate(model, x_adv: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        pred = torch.cat(
            [model(quantize(x_adv[i : i + 512])).argmax(1) for i in range(0, x_adv.shape[0], 512)]
        )
    return float((pred == target).float().mean())


def evaluate_patches(model, test_x, args, ours_patch, art_patch, nb_classes: int) -> dict[str, float]:
    """Success of both patches at the same random placements, with our renderer and with ART's."""
    b, c, h, w = test_x.shape
    rows = test_x.repeat(args.draws, 1, 1, 1)
    attack = ours_attack(args, 1)
    place = sample_placement(
        rows.shape[0], torch.Generator().manual_seed(10_000 + args.seed), (h, w), attack.base_side(h, w),
        rotation_max=args.rotation, scale_min=0.9, scale_max=1.1,
    )  # fmt: skip
    art_tex = torch.as_tensor(art_patch, dtype=torch.float32)
    out = {
        "robustkit_patch/robustkit_render": hit_rate(
            model, attack.render_at(rows, ours_patch, place), args.target
        ),
        "art_patch/robustkit_render": hit_rate(model, attack.render_at(rows, art_tex, place), args.target),
    }
    art = art_attack(model, args, 1, args.batch, (c, h, w), nb_classes)
    side = math.sqrt(4 * args.size / math.pi)
    ours_full = F.interpolate(ours_patch[None], size=(h, w), mode="bilinear", align_corners=True)[0]
    np.random.seed(20_000 + args.seed)
    torch.manual_seed(20_000 + args.seed)
    applied = {
        "robustkit_patch/art_render": art.apply_patch(
            rows.numpy(), scale=side, patch_external=ours_full.numpy()
        ),
        "art_patch/art_render": art.apply_patch(rows.numpy(), scale=side, patch_external=art_tex.numpy()),
    }
    for key, arr in applied.items():
        out[key] = hit_rate(model, torch.as_tensor(arr, dtype=torch.float32), args.target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="signs-resnet", help="zoo model (its dataset is used)")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--size", type=float, default=0.1, help="patch area fraction at scale 1")
    parser.add_argument("--rotation", type=float, default=22.5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eot", type=int, default=8, help="placements per image per iteration")
    parser.add_argument("--timing-steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=320, help="training iterations (multiple of train/batch)"
    )
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--draws", type=int, default=8, help="placements per held-out image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-effectiveness", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_zoo_model(args.model, progress=False).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dataset = BUILTIN.get(ZOO.create(args.model).dataset)
    train, test = dataset("train", n=args.train * 2), dataset("test", n=args.test)
    nb_classes = len(train.classes)
    keep = train.y != args.target
    train_x, train_y = train.x[keep][: args.train], train.y[keep][: args.train]
    test_x = test.x[test.y != args.target]

    # ---------------------------------------------------------------- time per iteration
    tx, ty = train_x[: args.batch], train_y[: args.batch]
    n = args.timing_steps
    rows = tx.repeat(args.eot, 1, 1, 1)

    def model_step() -> None:  # the model's share of an iteration, the same for both libraries
        r = rows.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(r), torch.zeros_like(ty).repeat(args.eot)), r)

    runs = timed(
        {
            "robustkit": lambda: train_ours(model, tx, ty, args, n, args.seed),
            "art": lambda: train_art(model, tx, ty, args, n, args.seed, nb_classes),
            "model": lambda: [model_step() for _ in range(n)],
        },
        args.reps,
        args.warmup,
    )
    ours_t, art_t = runs["robustkit"], runs["art"]
    ours_it, art_it = statistics.median(ours_t) / n, statistics.median(art_t) / n
    model_it = statistics.median(runs["model"]) / n
    result: dict = {
        "config": vars(args),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "timing": {
            "rows_per_iteration": args.batch * args.eot,
            "robustkit_s_per_iter": ours_it,
            "art_s_per_iter": art_it,
            "speedup_art_over_robustkit": art_it / ours_it,
            "model_fwd_bwd_s_per_iter": model_it,
            "robustkit_overhead_s_per_iter": ours_it - model_it,
            "art_overhead_s_per_iter": art_it - model_it,
            "overhead_ratio_art_over_robustkit": (art_it - model_it) / max(ours_it - model_it, 1e-9),
            "robustkit_runs_s": ours_t,
            "art_runs_s": art_t,
        },
    }
    print(f"time per iteration, batch {args.batch} x {args.eot} EOT samples ({args.batch * args.eot} rows), "
          f"median of {args.reps} interleaved runs of {n} iterations after {args.warmup} warm-up:")  # fmt: skip
    print(f"  {'robustkit':<12} {1000 * ours_it:9.1f} ms")
    print(f"  {'ART 1.20':<12} {1000 * art_it:9.1f} ms")
    print(f"  ART / robustkit = {art_it / ours_it:.1f}x")
    print(
        f"  of which the model's forward + backward on the same rows: {1000 * model_it:.1f} ms; outside it "
        f"(placement, rendering, bookkeeping) robustkit {1000 * (ours_it - model_it):.1f} ms, "
        f"ART {1000 * (art_it - model_it):.1f} ms = {(art_it - model_it) / max(ours_it - model_it, 1e-9):.1f}x"
    )

    # ---------------------------------------------------------------- effectiveness
    if not args.skip_effectiveness:
        per_epoch = math.ceil(train_x.shape[0] / args.batch)
        epochs = max(1, round(args.steps / per_epoch))
        steps = epochs * per_epoch
        t = time.perf_counter()
        ours_patch = train_ours(model, train_x, train_y, args, steps, args.seed)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        art_patch = train_art(model, train_x, train_y, args, epochs, args.seed, nb_classes)
        art_s = time.perf_counter() - t
        rates = evaluate_patches(model, test_x, args, ours_patch, art_patch, nb_classes)
        result["effectiveness"] = {
            "iterations": steps, "train_images": int(train_x.shape[0]), "test_images": int(test_x.shape[0]),
            "draws": args.draws, "robustkit_train_s": ours_s, "art_train_s": art_s, "target_success": rates,
        }  # fmt: skip
        print(f"\ntargeted success (class {args.target}) on {test_x.shape[0]} held-out images x {args.draws} "
              f"random placements, {steps} iterations each:")  # fmt: skip
        print(f"  {'patch':<12} {'robustkit renderer':>20} {'ART apply_patch':>16}   train time")
        for who, secs in (("robustkit", ours_s), ("art", art_s)):
            a, b = rates[f"{who}_patch/robustkit_render"], rates[f"{who}_patch/art_render"]
            print(f"  {who:<12} {100 * a:19.1f}% {100 * b:15.1f}%   {secs:7.1f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
