"""Training loops shared by the zoo and the defense recipes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


def accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    model.train(was)
    return correct / max(total, 1)


def fit(
    model: nn.Module,
    train: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    *,
    adversary: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    params: list[nn.Parameter] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """SGD with momentum and a one-cycle schedule. ``adversary(model, x, y) -> x_adv`` turns it into
    adversarial training; ``params`` restricts what is trained (BN-only fine-tuning)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.25)
    model.to(device).train()
    start, steps, last_loss = time.perf_counter(), 0, float("nan")
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress or None, leave=False)
    for _ in range(cfg.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if adversary is not None:
                x = adversary(model, x, y)
                model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            last_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    log.info("%s: %d steps in %.1fs, final loss %.3f", desc, steps, seconds, last_loss)
    return {
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "loss": last_loss,
    }
