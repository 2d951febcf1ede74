"""``fit``: the one training loop of robustkit, resumable, with its cost measured.

The zoo models and every defense recipe train here. Each epoch draws its batches from a generator
seeded per epoch (``order="per-epoch"``) and its adversarial random starts from another, so a run
resumed from the checkpoint written after every epoch (``out_dir``) ends with the same weights as an
uninterrupted one. ``order="one-stream"`` draws every epoch's order from one generator seeded once
(the zoo's order; such a run is not checkpointed). The loss is a function
``loss(model, x, y, StepContext)``: plain cross-entropy by default, an inner attack in adversarial
training. Network passes (counted by hooks on ``networks``) and seconds per step are kept in the state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError
from .checkpoints import read_checkpoint, restore_optimizer, save_checkpoint, split_checkpoint
from .data import batches
from .meter import PassMeter
from .schedule import Schedule, WarmupLinear, make_optimizer
from .settings import StepContext, TrainSettings

log = logging.getLogger(__name__)

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, StepContext], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Any) -> torch.Tensor:
    """Standard training: cross-entropy on the clean batch."""
    return F.cross_entropy(model(x), y)


def _classifier(name: str) -> bool:
    return name.split(".")[-2:-1] == ["fc"]


def fit(
    model: nn.Module,
    train: Dataset,
    settings: TrainSettings,
    *,
    device: torch.device,
    loss: Loss = cross_entropy,
    params: list[nn.Parameter] | None = None,
    schedule: Schedule | None = None,
    seed: int = 0,
    order: str = "per-epoch",
    out_dir: Path | None = None,
    identity: Mapping[str, Any] | None = None,
    resume: bool = True,
    fresh: Callable[[], dict[str, Any]] | None = None,
    networks: Mapping[str, nn.Module] | None = None,
    desc: str = "training",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``train`` for ``settings.epochs`` and return the training state.

    ``params``: the parameters to train (default: those that require grad); every other parameter is
    frozen. ``schedule``: default ``WarmupLinear(settings.warmup)`` around the peak ``settings.lr``.
    With ``out_dir`` a checkpoint is written after every epoch and, with ``resume``, a checkpoint of
    the same ``identity`` there is continued (another one is an error); ``fresh()`` is called only when
    starting over and returns state entries to keep (what a recipe prepared). The state holds
    ``identity``, those entries, ``epochs_done``, ``step``, ``history`` (mean loss and seconds per
    epoch), ``last_loss`` and ``cost`` (``seconds``, ``steps``, pass ``totals``).
    """
    if order not in ("per-epoch", "one-stream"):
        raise ConfigError(f"order must be 'per-epoch' or 'one-stream', got {order!r}")
    if out_dir is not None and order != "per-epoch":
        raise ConfigError("a checkpointed (resumable) run needs order='per-epoch'")
    identity = dict(identity or {})
    ckpt = read_checkpoint(out_dir) if out_dir is not None and resume else None
    if ckpt is not None and {k: ckpt[1].get(k) for k in identity} != identity:
        raise ConfigError(
            f"{out_dir} holds a checkpoint of another training run ({ckpt[1].get('recipe')} on "
            f"{ckpt[1].get('dataset')}, settings {ckpt[1].get('settings')}); resume with the same "
            "options, pass --no-resume to start over, or choose another --out"
        )
    if ckpt is None:
        state: dict[str, Any] = {
            **identity,
            **(fresh() if fresh is not None else {}),
            "epochs_done": 0,
            "step": 0,
            "history": [],
            "cost": {"seconds": 0.0, "steps": 0, "totals": None},
        }
    else:
        state = ckpt[1]
        model.load_state_dict(split_checkpoint(ckpt[0])[0])
        log.info("resuming %s from epoch %d in %s", desc, state["epochs_done"], out_dir)
    model.to(device)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    if not trainable:
        raise ConfigError(f"{desc}: no trainable parameters")
    opt = make_optimizer(trainable, settings)
    if ckpt is not None:
        tensors = {k: v.to(device) for k, v in split_checkpoint(ckpt[0])[1].items()}
        restore_optimizer(opt, tensors, state["optimizer"])
    clip = [p for n, p in model.named_parameters() if p.requires_grad and not _classifier(n)]

    total = settings.epochs * (len(train) // settings.batch_size)
    before = (schedule or WarmupLinear(settings.warmup)).bind(opt, settings.lr, total)
    meter = PassMeter(dict(networks or {"model": model}), settings.batch_size)
    for n, d in ((state["cost"]["totals"] or {}).get("by_network") or {}).items():
        meter.forward[n], meter.backward[n] = d["forward"], d["backward"]
    stream = torch.Generator().manual_seed(seed)
    bar = tqdm(
        total=total, initial=state["step"], desc=desc, unit="step", disable=not progress or None, leave=False
    )
    try:
        for epoch in range(state["epochs_done"], settings.epochs):
            shuffle = (
                stream if order == "one-stream" else torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            )
            attack = torch.Generator().manual_seed(seed * 7_919 + epoch * 104_729 + 17)
            step_ctx = StepContext(settings=settings, generator=attack)
            model.train()
            losses, seconds = [], 0.0
            for x, y in batches(train, settings.batch_size, shuffle, shuffle=True, drop_last=True):
                x, y = x.to(device), y.to(device)
                before(state["step"])
                step_ctx.fraction = (state["step"] + 1) / total
                t0 = time.perf_counter()
                value = _step(model, opt, loss, x, y, step_ctx, clip if settings.agc else None, device)
                seconds += time.perf_counter() - t0
                if not math.isfinite(value):
                    raise ModelError(
                        f"{desc}: the loss became {value} at epoch {epoch + 1}, step {state['step']}; lower --lr"
                    )
                losses.append(value)
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
            state["epochs_done"] = epoch + 1
            state["last_loss"] = losses[-1] if losses else float("nan")
            state["cost"]["seconds"] += seconds
            state["cost"]["steps"] += len(losses)
            state["cost"]["totals"] = meter.totals()
            mean = sum(losses) / max(len(losses), 1)
            state["history"].append({"epoch": epoch + 1, "loss": mean, "seconds": seconds})
            log.info("%s epoch %d: loss %.3f, %.1fs", desc, epoch + 1, mean, seconds)
            if out_dir is not None:
                save_checkpoint(out_dir, model, opt, state)
    finally:
        bar.close()
        meter.close()
    model.eval()
    return state


def _step(model, opt, loss, x, y, ctx, clip, device) -> float:
    """One optimizer step; returns the loss value."""
    value = loss(model, x, y, ctx)
    opt.zero_grad(set_to_none=True)
    value.backward()
    if clip is not None:
        from timm.utils.agc import adaptive_clip_grad  # timm only loads for a recipe that clips

        adaptive_clip_grad(clip, clip_factor=ctx.settings.agc)
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(value.detach())
