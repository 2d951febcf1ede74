"""Trained defenses: train a recipe into a directory (resumably, through ``robustkit.training``), cache
it beside the model zoo, and load it ready to evaluate.

``load_defense(name, dataset=...)`` returns a :class:`Defense`. ``name`` is a registered recipe
(trained on first use and cached under ``$ROBUSTKIT_CACHE/defenses``), ``"recipe:path/to/weights"`` (a
user's checkpoint for that recipe's architecture, loaded safely), a :class:`Defense`, or any
``nn.Module`` (a user's own defense; declare its capabilities with :func:`as_defense`).

Every epoch of ``train_defense`` ends with a checkpoint (and long epochs get checkpoints within); a resumed
run ends with the same weights as an uninterrupted one. Under ``torchrun`` it trains data-parallel
(``training.distributed``); rank 0 writes. The settings it trained with (the architecture ``arch``,
``width``, ...) are stored in the weights' metadata, and ``model_from_weights`` rebuilds that network
(a foreign file without them gets the recipe's defaults). The training cost per step (network passes and seconds) is measured together with
the cost of a standard training step of the reference network and stored with the finished model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..device import resolve_device
from ..errors import ConfigError
from ..files import cache_root, file_lock
from ..models.checkpoint import load_into, load_state
from ..models.normalized import Normalized
from ..training import distributed as dp
from ..training.checkpoints import FINAL, FINAL_META, read_final, save_final
from ..training.data import DataSpec, accuracy, batches, load_split, spec_for
from ..training.loop import fit
from ..training.meter import reference_cost, summarize_cost
from ..training.settings import TrainSettings
from .base import DEFENSES, Context, Defense, DefenseBackend, as_defense, split_spec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- training
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
    checkpoint_every: int | None = None,
    data_root: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train defense ``name`` on ``dataset`` into ``out_dir`` and return its info (figures and cost).

    ``epochs``, ``batch_size``, ``train_size``, ``lr`` and ``overrides`` (any other name in
    ``training.settings.OVERRIDABLE``: ``arch``, ``schedule``, ``weight_decay``, ...) replace the recipe's
    settings; None keeps the recipe's value.

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
    settings = recipe.settings.overridden(
        epochs=epochs, batch_size=batch_size, train_size=train_size, lr=lr, **overrides
    )
    out = Path(out_dir)
    dev = dp.local_device(resolve_device(device))
    created = dp.init_distributed(dev)
    try:
        return _train(recipe, settings, str(dataset), out, dev, resume, progress, seed, init, load, test_size,
                      checkpoint_every, data_root)  # fmt: skip
    finally:
        if created:
            dp.close_distributed()


def _train(
    recipe: DefenseBackend,
    settings: TrainSettings,
    dataset: str,
    out: Path,
    dev: torch.device,
    resume: bool,
    progress: bool,
    seed: int,
    init: str | Path | None,
    load: Callable[[str], nn.Module] | None,
    test_size: int | None,
    checkpoint_every: int | None,
    data_root: str | Path | None,
) -> dict[str, Any]:
    root = str(data_root) if data_root else None
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

    train = load_split(dataset, "train", settings.train_size, root=root)
    spec = spec_for(dataset, train)
    if len(train) < settings.batch_size:
        raise ConfigError(
            f"the train split has {len(train)} samples, fewer than --batch-size {settings.batch_size}"
        )
    try:
        model = recipe.build(spec, settings)
    except ConfigError as exc:
        raise ConfigError(f"--arch {settings.arch or '(the recipe default)'}: {exc}") from exc
    ctx = Context(
        dataset=str(dataset),
        spec=spec,
        device=dev,
        progress=progress,
        load=load or (lambda other: cached_model(other, dataset, dev, progress)[0]),
        init=Path(init).expanduser() if init else None,
    )

    def fresh() -> dict[str, Any]:
        prepared = recipe.prepare(model, ctx)
        xs, ys = next(iter(batches(train, settings.batch_size)))
        reference = reference_cost(recipe.reference(spec, settings), xs.to(dev), ys.to(dev), dev)
        return {"spec": spec.as_dict(), "prepared": prepared, "reference": reference}

    state = fit(
        model, train, settings, device=dev, loss=recipe.loss, params=recipe.trainable(model), seed=seed,
        out_dir=out, identity=identity, resume=resume, fresh=fresh, networks=recipe.networks(model),
        desc=f"training {recipe.name}", progress=progress, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    if not dp.is_main():  # rank 0 measures and writes the finished model; the others read it back
        dp.barrier()
        final = read_final(out)
        if final is None:
            raise ConfigError(
                f"rank 0 wrote no finished model in {out}; is --out on a filesystem every process sees?"
            )
        return final
    test = load_split(dataset, "test", test_size, root=root)
    cost = state["cost"]
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
        "cost": summarize_cost(cost["totals"], cost["steps"], cost["seconds"], state["reference"]),
        "processes": dp.world()[1],
    }
    final = save_final(out, model, info)
    dp.barrier()
    return final


# ----------------------------------------------------------------------------- the cache
def defense_cache_dir() -> Path:
    return cache_root() / "defenses"


def safe_dirname(text: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "data"
    return clean[:60]


def cache_path(name: str, dataset: str) -> Path:
    """Where ``load_defense`` keeps recipe ``name`` trained on ``dataset`` with its default settings."""
    recipe = DEFENSES.create(name).trained_recipe()
    return defense_cache_dir() / safe_dirname(str(dataset)) / f"{recipe.name}-{recipe.key()}"


def cached_model(
    name: str, dataset: str, device: torch.device, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of recipe ``name`` on ``dataset`` from the cache, training it on first use.

    Training and writing the cache hold a lock (``<cache dir>.lock``, as the zoo's), so two processes
    asking for the same defense at once train it once: the second waits, then loads the first one's."""
    recipe = DEFENSES.create(name).trained_recipe()
    out = cache_path(recipe.name, dataset)
    info = read_final(out)
    if info is None:
        with file_lock(out.with_name(out.name + ".lock"), f"training defense '{recipe.name}'"):
            info = read_final(out)  # trained by another process while this one waited
            if info is None:
                log.info(
                    "training defense '%s' on '%s' on first use (cached in %s)", recipe.name, dataset, out
                )
                info = train_defense(recipe.name, str(dataset), out_dir=out, device=device, progress=progress)
    spec = DataSpec.from_dict(info["spec"])
    model = recipe.build(spec, trained_settings(recipe, info.get("settings")))
    load_weights(model, out / FINAL)
    return model.to(device).eval(), info


# ----------------------------------------------------------------------------- user weights
def weights_metadata(path: Path) -> dict[str, Any]:
    """What robustkit recorded with weights it wrote: ``spec`` (a DataSpec dict) and ``settings`` (the
    TrainSettings it trained with), from the safetensors metadata or the ``model.json`` beside it; empty
    for a foreign file."""
    found: dict[str, Any] = {}
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            found = {k: json.loads(meta[k]) for k in ("spec", "settings") if k in meta}
        except (SafetensorError, OSError, ValueError, TypeError):
            found = {}
    beside = path.parent / FINAL_META
    if path.name == FINAL and beside.is_file() and not all(found.get(k) for k in ("spec", "settings")):
        try:
            info = json.loads(beside.read_text())
            found = {k: found.get(k) or info.get(k) for k in ("spec", "settings")}
        except (OSError, ValueError):
            pass
    return {k: v for k, v in found.items() if isinstance(v, dict)}


def weights_spec(path: Path) -> DataSpec | None:
    """The DataSpec robustkit recorded with weights it wrote (None for foreign files)."""
    spec = weights_metadata(path).get("spec")
    try:
        return DataSpec.from_dict(spec) if spec else None
    except (KeyError, ValueError, TypeError):
        return None


def trained_settings(recipe: DefenseBackend, stored: dict[str, Any] | None) -> TrainSettings:
    """The recipe's settings with those a model was trained with (``stored``, from its metadata) put back,
    so ``recipe.build`` rebuilds the same network (architecture, width, drop path...)."""
    if not stored:
        return recipe.settings
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    try:
        return dataclasses.replace(recipe.settings, **{k: v for k, v in stored.items() if k in known})
    except (TypeError, ValueError) as exc:
        log.warning(
            "ignoring the stored training settings (%s); building %s's default network", exc, recipe.name
        )
        return recipe.settings


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a state dict safely; a checkpoint of the inner network of a ``Normalized`` model fits too."""
    if isinstance(model, Normalized):
        keys = load_state(path).keys()
        if keys and not any(k.startswith(("model.", "module.model.")) for k in keys):
            load_into(model.model, path)
            return model
    return load_into(model, path)


def model_from_weights(recipe: DefenseBackend, dataset: str, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network the weights were trained as (the architecture and settings in their metadata; the
    recipe's defaults for a file without them) with those weights (safetensors, or a torch state dict
    loaded with ``weights_only=True``: pickles that would run code raise ``UnsafeCheckpointError``)."""
    meta = weights_metadata(path)
    spec = weights_spec(path) or spec_for(dataset, load_split(dataset, "test"))
    settings = trained_settings(recipe, meta.get("settings"))
    model = recipe.build(spec, settings)
    load_weights(model, path)
    return model.eval(), {
        "recipe": recipe.name,
        "dataset": str(dataset),
        "spec": spec.as_dict(),
        "weights": str(path),
        "arch": settings.arch,
        "settings": dataclasses.asdict(settings),
    }


# ----------------------------------------------------------------------------- ready to evaluate
def load_defense(
    name: str | Defense | nn.Module,
    *,
    dataset: str = "shapes",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Defense:
    """A ready-to-evaluate defense on ``device`` (a recipe's model in eval mode; a user's model in the mode
    it was given).

    A registered name trains on first use (cached under ``$ROBUSTKIT_CACHE/defenses``); ``name:path``
    loads a user checkpoint (safetensors, or a torch file with ``weights_only=True``; pickles carrying
    code are refused with ``UnsafeCheckpointError``).
    """
    if not isinstance(name, str):
        defense = as_defense(name)
        defense.model.to(resolve_device(device))  # evaluated in the mode it was given (never .eval())
        for source in defense.sources.values():
            source.to(resolve_device(device))
        return defense
    recipe_name, path = split_spec(name)
    recipe = DEFENSES.create(recipe_name)
    dev = resolve_device(device)
    if path is not None:
        model, info = model_from_weights(recipe.trained_recipe(), dataset, path)
    else:
        model, info = cached_model(recipe.trained_recipe().name, dataset, dev, progress)
    ctx = Context(
        dataset=dataset,
        spec=DataSpec.from_dict(info["spec"]),
        device=dev,
        progress=progress,
        load=lambda other: cached_model(other, dataset, dev, progress)[0],  # on dev, in eval mode
    )
    model = model.to(dev).eval()  # robustkit built and trained it: eval mode is how it is deployed
    sources = recipe.sources(model, ctx)
    model = recipe.view(model, ctx).to(dev).eval()
    info = {
        **info,
        "recipe": recipe.name,
        "description": recipe.description,
        "paper": recipe.paper,
        "published": recipe.published,
    }
    return Defense(
        name=name if path is None else f"{recipe_name}:{path.name}",
        model=model,
        capabilities=recipe.capabilities,
        info=info,
        sources=sources,
    )
