"""``train_defense``: train any registered defense on any dataset robustkit can load, resumably.

Every epoch ends with a checkpoint (model + optimizer state, safetensors with the JSON state inside).
A resumed run restarts the interrupted epoch with the same data order and attack random starts (both
are seeded per epoch), so it ends with the same weights as an uninterrupted run. The training cost per
step is measured (network passes, counted by hooks, and seconds) together with the cost of a standard
training step of the reference network, and stored with the checkpoint and the finished model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..device import resolve_device
from ..errors import ConfigError, ModelError
from .backbones import DataSpec
from .base import DEFENSES, Context, DefenseRecipe, StepContext, TrainSettings
from .checkpoints import (
    defense_cache_dir,
    load_weights,
    read_checkpoint,
    read_final,
    restore_optimizer,
    safe_dirname,
    save_checkpoint,
    save_final,
    split_checkpoint,
    weights_spec,
)
from .training import accuracy

log = logging.getLogger(__name__)

OVERRIDABLE = ("epochs", "batch_size", "train_size", "lr")


# ----------------------------------------------------------------------------- data
class _Head(Dataset):
    """The first ``n`` samples of a dataset, keeping its ``classes``."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base, self.n = base, n
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]


def load_split(dataset: str, split: str, n: int | None = None) -> Dataset:
    """A split of a built-in dataset (generated with only ``n`` samples) or of any loadable dataset."""
    from ..data.synthetic import BUILTIN

    if dataset in BUILTIN and n is not None:
        try:
            return BUILTIN.create(dataset, split=split, n=n)
        except ConfigError:
            pass  # a built-in without an ``n`` argument: take the head below
    from ..data.loading import load_dataset

    ds = load_dataset(dataset, split)
    return _Head(ds, n) if n is not None and n < len(ds) else ds


def spec_for(dataset: str, ds: Dataset) -> DataSpec:
    classes = list(getattr(ds, "classes", []))
    if len(ds) == 0:
        raise ConfigError(f"dataset '{dataset}' is empty")
    x0 = ds[0][0]
    if not classes:
        raise ConfigError(f"dataset '{dataset}' has no 'classes' attribute; robustkit needs the class list")
    return DataSpec(name=str(dataset), num_classes=len(classes), shape=tuple(int(s) for s in x0.shape))


# ----------------------------------------------------------------------------- cost measurement
class PassMeter:
    """Counts forward and backward passes of the named networks, in units of one training batch.

    A forward pass over 2B rows (clean + adversarial) counts 2; a backward pass is counted when a
    gradient reaches the network's output (parameter or input gradients alike).
    """

    def __init__(self, networks: dict[str, nn.Module], batch_size: int) -> None:
        self.batch_size = batch_size
        self.forward: dict[str, float] = defaultdict(float)
        self.backward: dict[str, float] = defaultdict(float)
        self._handles = [m.register_forward_hook(partial(self._hook, name)) for name, m in networks.items()]

    def _hook(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        outs = (
            [output]
            if isinstance(output, torch.Tensor)
            else [o for o in output if isinstance(o, torch.Tensor)]
        )
        if not outs:
            return
        units = outs[-1].shape[0] / self.batch_size
        self.forward[name] += units
        if outs[-1].requires_grad:
            outs[-1].register_hook(lambda grad: self._backward(name, units))

    def _backward(self, name: str, units: float) -> None:
        self.backward[name] += units

    def totals(self) -> dict[str, Any]:
        fwd, bwd = sum(self.forward.values()), sum(self.backward.values())
        return {
            "forward": fwd,
            "backward": bwd,
            "total": fwd + bwd,
            "by_network": {
                n: {"forward": self.forward[n], "backward": self.backward[n]} for n in self.forward
            },
        }

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def reference_cost(
    recipe: DefenseRecipe,
    spec: DataSpec,
    settings: TrainSettings,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    steps: int = 4,
) -> dict[str, float]:
    """Passes and seconds of one standard-training step (CE, backward, SGD) of the reference network."""
    net = recipe.reference(spec, settings).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    meter = PassMeter({"model": net}, x.shape[0])
    seconds = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - t0
        else:
            meter.forward.clear()
            meter.backward.clear()
    meter.close()
    return {"passes_per_step": meter.totals()["total"] / steps, "seconds_per_step": seconds / steps}


def summarize_cost(
    totals: dict[str, Any], steps: int, seconds: float, reference: dict[str, float]
) -> dict[str, Any]:
    per = {k: totals[k] / max(steps, 1) for k in ("forward", "backward", "total")}
    sps = seconds / max(steps, 1)
    return {
        "steps": steps,
        "passes_per_step": per,
        "passes_by_network": {
            n: {k: v / max(steps, 1) for k, v in d.items()} for n, d in totals["by_network"].items()
        },
        "seconds_per_step": sps,
        "reference": reference,
        "relative_passes": per["total"] / reference["passes_per_step"]
        if reference.get("passes_per_step")
        else None,
        "relative_seconds": sps / reference["seconds_per_step"]
        if reference.get("seconds_per_step")
        else None,
    }


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear ramp over the first ``warmup`` fraction of steps, then linear decay to zero."""
    warm = max(1, int(round(total * warmup)))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay
    )


def _classifier(name: str) -> bool:
    return name.split(".")[-2:-1] == ["fc"]


# ----------------------------------------------------------------------------- training
def resolve_settings(recipe: DefenseRecipe, **overrides: Any) -> TrainSettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    for k, v in given.items():
        if k not in OVERRIDABLE:
            raise ConfigError(f"train: unknown setting '{k}'; one of {', '.join(OVERRIDABLE)}")
        if k == "lr":
            if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"--lr must be a positive number, got {v!r}")
        elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
    return dataclasses.replace(recipe.settings, **given)


def train_defense(
    name: str,
    dataset: str = "shapes",
    *,
    out_dir: str | Path,
    epochs: int | None = None,
    device: str | torch.device = "auto",
    resume: bool = True,
    progress: bool = True,
    train_size: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    init: str | Path | None = None,
    load: Callable[[str], nn.Module] | None = None,
    test_size: int | None = 2000,
) -> dict[str, Any]:
    """Train defense ``name`` on ``dataset`` into ``out_dir`` and return its info (figures and cost).

    ``resume`` continues from the last completed epoch in ``out_dir`` (and returns at once if the
    defense is already trained there); ``init`` is a weights path the recipe starts from (the trained
    network for BN fine-tuning, the substitute for ABNN); ``load(other)`` supplies other trained
    defenses (default: the cache used by ``load_defense``).
    """
    recipe = DEFENSES.create(name)
    if recipe.weights_of:
        log.info(
            "'%s' is an evaluation view of '%s'; training '%s'", name, recipe.weights_of, recipe.weights_of
        )
        recipe = recipe.trained_recipe()
    if recipe.loss is None:
        raise ConfigError(f"defense '{recipe.name}' has no training objective")
    settings = resolve_settings(recipe, epochs=epochs, batch_size=batch_size, train_size=train_size, lr=lr)
    out = Path(out_dir)
    dev = resolve_device(device)
    identity = {
        "recipe": recipe.name,
        "dataset": str(dataset),
        "settings": dataclasses.asdict(settings),
        "seed": seed,
    }
    final = read_final(out)
    if final is not None and resume:
        if {k: final.get(k) for k in identity} == identity:
            log.info("%s is already trained in %s", recipe.name, out)
            return final
        raise ConfigError(
            f"{out} already holds a trained defense ({final.get('recipe')} on {final.get('dataset')}, "
            "other settings); choose another --out"
        )

    train = load_split(dataset, "train", settings.train_size)
    spec = spec_for(dataset, train)
    if len(train) < settings.batch_size:
        raise ConfigError(
            f"the train split has {len(train)} samples, fewer than --batch-size {settings.batch_size}"
        )
    model = recipe.build(spec, settings)
    loader_for_other = load or (lambda other: cached_model(other, str(dataset), dev, progress)[0])
    ctx = Context(
        dataset=str(dataset),
        spec=spec,
        device=dev,
        progress=progress,
        load=loader_for_other,
        init=Path(init).expanduser() if init else None,
    )

    ckpt = read_checkpoint(out) if resume else None
    if ckpt is not None and {k: ckpt[1].get(k) for k in identity} != identity:
        raise ConfigError(
            f"{out} holds a checkpoint of another training run ({ckpt[1].get('recipe')} on "
            f"{ckpt[1].get('dataset')}, settings {ckpt[1].get('settings')}); resume with the same "
            "options, pass --no-resume to start over, or choose another --out"
        )
    state: dict[str, Any]
    if ckpt is None:
        prepared = recipe.prepare(model, ctx) if recipe.prepare is not None else {}
        state = {
            **identity,
            "spec": spec.as_dict(),
            "epochs_done": 0,
            "step": 0,
            "history": [],
            "prepared": prepared,
            "cost": {"seconds": 0.0, "steps": 0, "totals": None},
            "reference": None,
        }
    else:
        state = ckpt[1]
        model.load_state_dict(split_checkpoint(ckpt[0])[0])
        log.info("resuming %s from epoch %d in %s", recipe.name, state["epochs_done"], out)
    model.to(dev)
    trainable = recipe.trainable(model)
    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    if not trainable:
        raise ConfigError(f"defense '{recipe.name}' selects no trainable parameters")
    opt = make_optimizer(trainable, settings)
    if ckpt is not None:
        restore_optimizer(
            opt, {k: v.to(dev) for k, v in split_checkpoint(ckpt[0])[1].items()}, state["optimizer"]
        )
    agc_params = [p for n, p in model.named_parameters() if p.requires_grad and not _classifier(n)]

    steps_per_epoch = len(train) // settings.batch_size
    total = settings.epochs * steps_per_epoch
    if state["reference"] is None:
        xs, ys = next(iter(DataLoader(train, batch_size=settings.batch_size)))
        state["reference"] = reference_cost(recipe, spec, settings, xs.to(dev), ys.to(dev), dev)
    meter = PassMeter(recipe.networks(model), settings.batch_size)
    if state["cost"]["totals"]:
        t = state["cost"]["totals"]
        for n, d in t["by_network"].items():
            meter.forward[n], meter.backward[n] = d["forward"], d["backward"]
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc=f"training {recipe.name}",
        unit="step",
        disable=not progress or None,
        leave=False,
    )
    try:
        for epoch in range(state["epochs_done"], settings.epochs):
            state = _epoch(
                recipe, model, opt, train, settings, seed, epoch, total, dev, meter, agc_params, state, bar
            )
            state["cost"]["totals"] = meter.totals()
            save_checkpoint(out, model, opt, state)
    finally:
        bar.close()
        meter.close()
    model.eval()
    test = load_split(dataset, "test", test_size)
    info = {
        **identity,
        "spec": spec.as_dict(),
        "epochs_done": state["epochs_done"],
        "history": state["history"],
        "prepared": state["prepared"],
        "description": recipe.description,
        "paper": recipe.paper,
        "clean_test_accuracy": accuracy(model, test, dev),
        "test_samples": len(test),
        "train_samples": len(train),
        "device": str(dev),
        "cost": summarize_cost(
            meter.totals(), state["cost"]["steps"], state["cost"]["seconds"], state["reference"]
        ),
    }
    return save_final(out, model, info)


def _epoch(
    recipe, model, opt, train, settings, seed, epoch, total, dev, meter, agc_params, state, bar
) -> dict:
    from timm.utils.agc import adaptive_clip_grad

    order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    attack_gen = torch.Generator().manual_seed(seed * 7_919 + epoch * 104_729 + 17)
    loader = DataLoader(train, batch_size=settings.batch_size, shuffle=True, generator=order, drop_last=True)
    step_ctx = StepContext(settings=settings, generator=attack_gen)
    model.train()
    losses, seconds = [], 0.0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], total, settings.lr, settings.warmup)
        step_ctx.fraction = (state["step"] + 1) / total
        t0 = time.perf_counter()
        loss = recipe.loss(model, x, y, step_ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.agc:
            adaptive_clip_grad(agc_params, clip_factor=settings.agc)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds += time.perf_counter() - t0
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ModelError(
                f"training {recipe.name}: the loss became {value} at epoch {epoch + 1}, step {state['step']}; "
                "lower --lr"
            )
        losses.append(value)
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
    state["epochs_done"] = epoch + 1
    state["cost"]["seconds"] += seconds
    state["cost"]["steps"] += len(losses)
    state["history"].append(
        {"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1), "seconds": seconds}
    )
    log.info("%s epoch %d: loss %.3f, %.1fs", recipe.name, epoch + 1, state["history"][-1]["loss"], seconds)
    return state


# ----------------------------------------------------------------------------- loading trained defenses
def cache_path(name: str, dataset: str) -> Path:
    """Where ``load_defense`` keeps recipe ``name`` trained on ``dataset`` with its default settings."""
    recipe = DEFENSES.create(name).trained_recipe()
    return defense_cache_dir() / safe_dirname(str(dataset)) / f"{recipe.name}-{recipe.key()}"


def cached_model(
    name: str, dataset: str, device: torch.device, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of recipe ``name`` on ``dataset`` from the cache, training it on first use."""
    recipe = DEFENSES.create(name).trained_recipe()
    out = cache_path(recipe.name, dataset)
    info = read_final(out)
    if info is None:
        log.info("training defense '%s' on '%s' on first use (cached in %s)", recipe.name, dataset, out)
        info = train_defense(recipe.name, str(dataset), out_dir=out, device=device, progress=progress)
    spec = DataSpec.from_dict(info["spec"])
    model = recipe.build(spec, recipe.settings)
    load_weights(model, out / "model.safetensors")
    return model.to(device).eval(), info


def model_from_weights(recipe: DefenseRecipe, dataset: str, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The recipe's architecture with a user's weights (safetensors, or a torch state dict loaded with
    ``weights_only=True``: pickles that would run code raise ``UnsafeCheckpointError``)."""
    spec = weights_spec(path) or spec_for(dataset, load_split(dataset, "test"))
    model = recipe.build(spec, recipe.settings)
    load_weights(model, path)
    return model.eval(), {
        "recipe": recipe.name,
        "dataset": str(dataset),
        "spec": spec.as_dict(),
        "weights": str(path),
    }
