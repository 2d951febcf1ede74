"""``fit``: the one training loop of robustkit, resumable, data-parallel, with its cost measured.

The zoo models and every defense recipe train here. Each epoch draws its batches from a generator
seeded per epoch (``order="per-epoch"``), its adversarial random starts from another and each step's
augmentation (``settings.augment``) from one seeded per step, so a run resumed from a checkpoint
(``out_dir``: after every epoch, and within an epoch every ``checkpoint_every`` steps or
``checkpoint_seconds``) ends with the same weights as an uninterrupted one. ``order="one-stream"`` draws
every epoch's order from one generator seeded once (the zoo's order; such a run is not checkpointed).
The loss is a function ``loss(model, x, y, StepContext)``: cross-entropy (with
``settings.label_smoothing``) by default, an inner attack in adversarial training; it runs under
``settings.amp`` autocast. Under ``torchrun`` every process trains on its shard of each global batch
(``training.distributed``). Network passes (counted by hooks on ``networks``) and seconds per step are
kept in the state.
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
from . import distributed as dp
from .augment import augment_batch
from .checkpoints import read_checkpoint, restore_optimizer, save_checkpoint, split_checkpoint
from .data import epoch_batches
from .meter import PassMeter
from .schedule import Schedule, make_optimizer, schedule_for
from .settings import StepContext, TrainSettings

log = logging.getLogger(__name__)

# a checkpoint within an epoch at least this often (seconds) when ``checkpoint_every`` is not given
CHECKPOINT_SECONDS = 600.0
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, StepContext], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Any) -> torch.Tensor:
    """Standard training: cross-entropy on the clean batch (label smoothing from ``ctx.settings``)."""
    smoothing = getattr(getattr(ctx, "settings", None), "label_smoothing", 0.0)
    return F.cross_entropy(model(x), y, label_smoothing=smoothing)


def _classifier(name: str) -> bool:
    return name.split(".")[-2:-1] == ["fc"]


def _seed(*parts: int) -> int:
    """A generator seed from integers (distinct tuples give distinct streams in practice)."""
    value = 0x9E3779B9
    for p in parts:
        value = (value * 1_000_003 + p + 0x632BE5AB) % (1 << 62)
    return value


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
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
) -> dict[str, Any]:
    """Train ``model`` on ``train`` for ``settings.epochs`` and return the training state.

    ``params``: the parameters to train (default: those that require grad); every other parameter is
    frozen. ``schedule``: default ``schedule_for(settings)`` (warm-up, then linear or cosine decay) around
    the peak ``settings.lr``. With ``out_dir`` a checkpoint is written after every epoch and within an
    epoch every ``checkpoint_every`` steps (else whenever ``checkpoint_seconds`` passed since the last
    one; None: never within an epoch); with ``resume``, a checkpoint of the same ``identity`` there is
    continued, mid-epoch included (another one is an error); ``fresh()`` is called only when starting
    over and returns state entries to keep (what a recipe prepared). The state holds ``identity``, those
    entries, ``epochs_done``, ``step``, ``history`` (mean loss and seconds per epoch), ``last_loss`` and
    ``cost`` (``seconds``, ``steps``, pass ``totals``).

    In a process group (``torchrun``) each process trains on its rows of every global batch of
    ``settings.batch_size`` with BatchNorm over the global batch and averaged gradients; only rank 0
    writes checkpoints and shows progress; every process returns the same state and weights.
    """
    if order not in ("per-epoch", "one-stream"):
        raise ConfigError(f"order must be 'per-epoch' or 'one-stream', got {order!r}")
    if out_dir is not None and order != "per-epoch":
        raise ConfigError("a checkpointed (resumable) run needs order='per-epoch'")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be a positive number of steps, got {checkpoint_every}")
    if settings.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "--amp fp16 needs a CUDA device (the loss is scaled with a GradScaler); use --amp bf16 on a CPU"
        )
    rank, size = dp.world()
    rows = dp.shard_rows(settings.batch_size)
    main = rank == 0
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
        log.info(
            "resuming %s from epoch %d, step %d in %s", desc, state["epochs_done"], state["step"], out_dir
        )
    model.to(device)
    dp.broadcast_model(model)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    if not trainable:
        raise ConfigError(f"{desc}: no trainable parameters")
    opt = make_optimizer(trainable, settings)
    scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" else None
    if ckpt is not None:
        tensors = {k: v.to(device) for k, v in split_checkpoint(ckpt[0])[1].items()}
        restore_optimizer(opt, tensors, state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    clip = [p for n, p in model.named_parameters() if p.requires_grad and not _classifier(n)]
    run = _Step(model, opt, loss, trainable, clip if settings.agc else None, device, settings.amp, scaler)

    per_epoch = len(train) // settings.batch_size
    total = settings.epochs * per_epoch
    before = (schedule or schedule_for(settings)).bind(opt, settings.lr, total)
    meter = PassMeter(dict(networks or {"model": model}), rows.stop - rows.start)
    for n, d in ((state["cost"]["totals"] or {}).get("by_network") or {}).items():
        meter.forward[n], meter.backward[n] = d["forward"], d["backward"]
    stream = torch.Generator().manual_seed(seed)
    bar = tqdm(
        total=total, initial=state["step"], desc=desc, unit="step", disable=not (progress and main) or None,
        leave=False,
    )  # fmt: skip

    saved = [state["step"] if ckpt is not None else None]  # the step of the last checkpoint in out_dir
    timing = _Estimate(desc, total, state["step"]) if main else None

    def save(attack: torch.Generator) -> None:
        if out_dir is not None and main:
            state["cost"]["totals"] = meter.totals()
            state["scaler"] = scaler.state_dict() if scaler is not None else None
            save_checkpoint(out_dir, model, opt, state, {"rng.attack": attack.get_state()})
            saved[0] = state["step"]

    try:
        with dp.synced_batchnorm(model):
            for epoch in range(state["epochs_done"], settings.epochs):
                done = state["step"] - epoch * per_epoch  # steps of this epoch already taken (a resume)
                shuffle = (
                    stream
                    if order == "one-stream"
                    else torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                )
                # each process draws its own random starts (rank 0 those of a one-process run)
                attack = torch.Generator().manual_seed(
                    seed * 7_919 + epoch * 104_729 + 17 + rank * 15_485_863
                )
                partial = state.pop("partial", None) if done else None
                if partial is not None:
                    attack.set_state(ckpt[0]["rng.attack"])
                step_ctx = StepContext(settings=settings, generator=attack)
                model.train()
                losses = list(partial["losses"]) if partial else []
                seconds = partial["seconds"] if partial else 0.0
                saved_at = time.monotonic()
                for x, y in epoch_batches(train, settings.batch_size, shuffle, rows=rows, skip=done):
                    x, y = x.to(device), y.to(device)
                    if settings.augment != "none":
                        g = torch.Generator().manual_seed(_seed(seed, epoch, state["step"]))
                        x = augment_batch(x, settings.augment, g, rows=rows, total=settings.batch_size)
                    before(state["step"])
                    step_ctx.fraction = (state["step"] + 1) / total
                    t0 = time.perf_counter()
                    value = run(x, y, step_ctx)
                    dt = time.perf_counter() - t0
                    seconds += dt
                    if not math.isfinite(value):
                        raise ModelError(
                            f"{desc}: the loss became {value} at epoch {epoch + 1}, step {state['step']}; lower --lr"
                        )
                    losses.append(value)
                    state["step"] += 1
                    state["cost"]["seconds"] += dt
                    state["cost"]["steps"] += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
                    if timing is not None:
                        timing.step(state["step"])
                    in_epoch = len(losses)
                    due = (
                        in_epoch % checkpoint_every == 0
                        if checkpoint_every
                        else checkpoint_seconds is not None
                        and time.monotonic() - saved_at >= checkpoint_seconds
                    )
                    if due and in_epoch < per_epoch:
                        state["partial"] = {"losses": losses, "seconds": seconds}
                        save(attack)
                        state.pop("partial")
                        saved_at = time.monotonic()
                state["epochs_done"] = epoch + 1
                state["last_loss"] = losses[-1] if losses else float("nan")
                mean = sum(losses) / max(len(losses), 1)
                state["history"].append({"epoch": epoch + 1, "loss": mean, "seconds": seconds})
                if main:
                    log.info("%s epoch %d: loss %.3f, %.1fs", desc, epoch + 1, mean, seconds)
                save(attack)
            state["cost"]["totals"] = meter.totals()
    except KeyboardInterrupt:
        if main:
            _say_interrupted(desc, state["step"], total, per_epoch, saved[0], out_dir, checkpoint_every,
                             checkpoint_seconds)  # fmt: skip
        raise
    finally:
        bar.close()
        meter.close()
    model.zero_grad(set_to_none=True)  # a trained model holds no gradients, as one loaded from its file
    model.eval()
    return state


def about(seconds: float) -> str:
    """A duration for a person: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Estimate:
    """Says once, after the first few steps of this process, how long the rest will take (from the wall
    time of steps 2 to 4: the first one carries one-time costs)."""

    AFTER = 4

    def __init__(self, desc: str, total: int, start: int) -> None:
        self.desc, self.total, self.start = desc, total, start
        self.t1: float | None = None

    def step(self, step: int) -> None:
        taken = step - self.start
        if taken == 1:
            self.t1 = time.perf_counter()
        elif taken == self.AFTER and self.t1 is not None:
            per_step = (time.perf_counter() - self.t1) / (self.AFTER - 1)
            left = self.total - step
            log.info("%s: %d steps, about %s to go (%.2f s per step on its first steps)", self.desc,
                     self.total, about(per_step * left), per_step)  # fmt: skip


def _say_interrupted(
    desc: str,
    step: int,
    total: int,
    per_epoch: int,
    saved: int | None,
    out_dir: Path | None,
    every: int | None,
    seconds: float | None,
) -> None:
    """What an interrupted training left behind, as it is: the last checkpoint, or nothing."""
    if out_dir is None:
        log.warning("%s interrupted at step %d of %d: it keeps no checkpoint and starts over on its next use",
                    desc, step, total)  # fmt: skip
    elif saved is None:
        within = f"every {every} steps" if every else f"every {about(seconds)}" if seconds else "never"
        log.warning("%s interrupted at step %d of %d, before its first checkpoint: nothing of it is saved in "
                    "%s (checkpoints come after each epoch of %d steps and within an epoch %s; "
                    "--checkpoint-every N saves sooner)", desc, step, total, out_dir, per_epoch, within)  # fmt: skip
    else:
        epochs, into = divmod(saved, max(per_epoch, 1))
        where = f"the end of epoch {epochs}" if into == 0 else f"{into} steps into epoch {epochs + 1}"
        log.warning("%s interrupted at step %d of %d: its checkpoint at step %d (%s) in %s is kept; the same "
                    "command resumes from there", desc, step, total, saved, where, out_dir)  # fmt: skip


class _Step:
    """One optimizer step: the loss under autocast, backward (scaled for fp16), gradients averaged over
    the processes, adaptive clipping, the update. Returns the (process-averaged) loss value."""

    def __init__(self, model, opt, loss, params, clip, device, amp, scaler) -> None:
        self.model, self.opt, self.loss, self.params, self.clip = model, opt, loss, params, clip
        self.device, self.dtype, self.scaler = device, AMP_DTYPES.get(amp), scaler

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> float:
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            value = self.loss(self.model, x, y, ctx)
        self.opt.zero_grad(set_to_none=True)
        (self.scaler.scale(value) if self.scaler is not None else value).backward()
        mean = dp.average_gradients(self.params, value)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if self.clip is not None:
            from timm.utils.agc import adaptive_clip_grad  # timm only loads for a recipe that clips

            adaptive_clip_grad(self.clip, clip_factor=ctx.settings.agc)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return mean
