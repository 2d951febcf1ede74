"""How far clean BN-only training of a randomly initialized network gets on the built-in ``shapes`` data:
the figures behind ``bn-random``'s budget (``robustkit/defenses/bn_finetune.py``, ``docs/defenses.md``).

    python benchmarks/bn_only_random.py --steps 150 1500 --lr 0.01 --classifier both

Trains only the BatchNorm affine parameters (and, with ``--classifier``, the last linear layer) of the
recipe's random network with Adam at a constant learning rate on clean batches of 32, then reports clean
accuracy on 500 test images. One thread, seed 0 (recorded on a 2-core machine: 13% after 150 steps, 16%
with the classifier; 34% after 1500, 40% with the classifier; 4 s and 32 s).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from robustkit.defenses.backbones import build_backbone, normalized
from robustkit.defenses.bn_finetune import bn_parameters
from robustkit.training.data import DataSpec, batches, load_split


def run(steps: int, lr: float, classifier: bool, arch: str | None, width: int) -> dict:
    train, test = load_split("shapes", "train", 2400), load_split("shapes", "test", 500)
    model = normalized(build_backbone(DataSpec("shapes", 10, (3, 32, 32)), arch, width=width), 3)
    params = bn_parameters(model, classifier=classifier)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    t0, step, epoch = time.perf_counter(), 0, 0
    model.train()
    while step < steps:
        for x, y in batches(train, 32, torch.Generator().manual_seed(epoch), shuffle=True, drop_last=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(test, 250))
    return {"steps": steps, "lr": lr, "classifier": classifier, "arch": arch or "small-resnet",
            "train_loss": float(loss.detach()), "clean": correct / len(test),
            "seconds": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[150, 1500])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--classifier", choices=["no", "yes", "both"], default="both")
    p.add_argument("--arch", default=None, help="architecture spec (default: the recipe's SmallResNet)")
    p.add_argument("--width", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    heads = {"no": [False], "yes": [True], "both": [False, True]}[args.classifier]
    for steps in args.steps:
        for classifier in heads:
            print(json.dumps(run(steps, args.lr, classifier, args.arch, args.width)), flush=True)


if __name__ == "__main__":
    main()
