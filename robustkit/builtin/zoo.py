"""The model zoo for the built-in datasets: trained on first use, cached as safetensors with a checksum.

Each built-in dataset module adds its entry with ``register_zoo`` (or ``register_small_resnet``);
``load_zoo_model(name)`` returns the trained model in eval mode, training it (with a progress bar) when
the cache does not hold verified weights. Building a model never changes the caller's random state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write, cache_root, file_lock
from ..models.checkpoint import load_into, save_weights, sha256
from ..models.inputsize import input_record
from ..models.loading import ModelRequest, ModelSource, Resolved, register_source
from ..models.normalized import Normalized
from ..models.resnet import SmallResNet
from ..registry import Registry
from ..training.data import accuracy
from ..training.loop import fit
from ..training.schedule import OneCycle
from ..training.seeding import fixed_seed
from ..training.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    """``build()`` returns an untrained model (normalization inside); ``train(model, device, progress)``
    trains it and returns a dict of figures (clean test accuracy at least). ``input_shape``: the shape of
    one sample it is trained on, (C, H, W) or (C, T, H, W) (a folder given as data is resized to it)."""

    name: str
    dataset: str
    build: Callable[[], nn.Module]
    train: Callable[[nn.Module, torch.device, bool], dict]
    version: str = "1"
    description: str = ""
    extra: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = (3, 32, 32)


ZOO: Registry[ZooEntry] = Registry("zoo model", autoload=("robustkit.builtin",))


def register_zoo(entry: ZooEntry) -> ZooEntry:
    ZOO.register(entry.name)(lambda: entry)
    return entry


def cache_dir() -> Path:
    return cache_root() / "zoo"


def _key(entry: ZooEntry) -> str:
    blob = json.dumps(
        {"name": entry.name, "version": entry.version, "torch": torch.__version__.split("+")[0]}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def zoo_path(name: str) -> Path:
    entry = ZOO.create(name)
    return cache_dir() / f"{name}-{_key(entry)}.safetensors"


def _verified(path: Path) -> bool:
    """The cached weights exist and match the checksum recorded next to them."""
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return False
    try:
        return json.loads(meta_path.read_text()).get("sha256") == sha256(path)
    except (OSError, ValueError):
        return False


def load_zoo_model(name: str, device: torch.device | str = "cpu", progress: bool = True) -> nn.Module:
    """The trained zoo model ``name`` in eval mode, trained and cached on first use.

    Training and writing the cache hold a lock (``<weights>.lock``), so two processes asking for the same
    model at once train it once: the second waits and loads the first one's weights. Weights and their
    checksum are each written atomically (a temporary file in the same directory, then a rename).
    """
    entry = ZOO.create(name)
    path = zoo_path(name)
    model = entry.build()
    if _verified(path):
        return load_into(model, path).to(device).eval()
    with file_lock(path.with_suffix(".lock"), f"training zoo model '{name}'"):
        if _verified(path):  # trained by another process while this one waited
            return load_into(model, path).to(device).eval()
        if path.exists():
            log.warning("cached weights %s fail their checksum; retraining", path)
        log.info("training zoo model '%s' on first use (cached in %s)", name, path.parent)
        figures = entry.train(model, torch.device(device), progress)
        digest = save_weights(model, path, metadata={"zoo": name})
        meta = {"name": name, "sha256": digest, "figures": figures,
                "entry": asdict(entry) | {"build": None, "train": None}}  # fmt: skip
        atomic_write(path.with_suffix(".json"), json.dumps(meta, default=str, indent=2))
    return model.to(device).eval()


def zoo_figures(name: str) -> dict:
    meta = zoo_path(name).with_suffix(".json")
    return json.loads(meta.read_text()).get("figures", {}) if meta.exists() else {}


SMALL_MEAN = (0.5, 0.5, 0.5)
SMALL_STD = (0.25, 0.25, 0.25)


def train_standard(
    model: nn.Module,
    train: torch.utils.data.Dataset,
    test: torch.utils.data.Dataset,
    device: torch.device,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    desc: str,
    progress: bool,
) -> dict:
    """The zoo's standard training: SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a one-cycle
    schedule on one data-order stream seeded with 0; returns the figures stored with the weights."""
    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr, weight_decay=5e-4, train_size=None
    )
    state = fit(
        model,
        train,
        settings,
        device=device,
        schedule=OneCycle(0.25),
        order="one-stream",
        desc=desc,
        progress=progress,
    )
    steps, seconds = state["cost"]["steps"], state["cost"]["seconds"]
    return {
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "loss": state.get("last_loss", float("nan")),
        "clean_test_accuracy": accuracy(model, test, device),
    }


def register_small_resnet(
    dataset: str,
    load: Callable[[str], torch.utils.data.Dataset],
    num_classes: int,
    *,
    seed: int,
    epochs: int,
    about: str,
) -> ZooEntry:
    """The zoo entry ``<dataset>-resnet`` for a built-in 32x32 dataset: ``SmallResNet`` (width 16) behind
    ``Normalized(0.5, 0.25)``, initial weights from ``seed``, standard training for ``epochs`` on
    ``load("train")``, clean accuracy measured on ``load("test")``; ``about`` completes its description."""
    name = f"{dataset}-resnet"

    def build() -> nn.Module:
        with fixed_seed(seed):  # deterministic initial weights; the caller's generator is left alone
            return Normalized(SmallResNet(num_classes=num_classes, width=16), SMALL_MEAN, SMALL_STD)

    def train(model: nn.Module, device: torch.device, progress: bool) -> dict:
        return train_standard(
            model, load("train"), load("test"), device, epochs=epochs, batch_size=128, lr=0.1,
            desc=f"training {name}", progress=progress,
        )  # fmt: skip

    description = f"Compact ResNet (16-32-64-128 channels) for 32x32 {about}."
    return register_zoo(
        ZooEntry(name=name, dataset=dataset, build=build, train=train, description=description)
    )


class ZooSource(ModelSource):
    """Zoo names: the built-in models, trained on first use."""

    scheme = "zoo"

    def claims(self, spec: str) -> bool:
        return spec.removeprefix("zoo:") in ZOO

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        name = spec.removeprefix("zoo:")
        model = load_zoo_model(name, device=request.device, progress=request.progress)
        entry = ZOO.create(name)
        declared = input_record(
            entry.input_shape, f"the zoo model {name}'s metadata (trained on {entry.dataset})"
        )
        return Resolved(model, {"kind": "zoo", "name": name, "input": declared})

    def names(self) -> list[str]:
        return ZOO.names()

    def default_for(self, dataset: str) -> str | None:
        return next((n for n in ZOO.names() if ZOO.create(n).dataset == dataset), None)


register_source(ZooSource(), first=True)
