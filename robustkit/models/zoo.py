"""The model zoo for the built-in datasets: trained on first use, cached as safetensors with a checksum.

Other modules add entries with ``register_zoo``; ``load_zoo_model(name)`` returns the trained model in
eval mode, training it (with a progress bar) when the cache does not hold verified weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..registry import Registry
from .checkpoint import load_into, save_weights, sha256
from .loading import ModelRequest, ModelSource, Resolved, register_source
from .normalized import Normalized
from .resnet import SmallResNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    """``build()`` returns an untrained model (normalization inside); ``train(model, device, progress)``
    trains it and returns a dict of figures (clean test accuracy at least)."""

    name: str
    dataset: str
    build: Callable[[], nn.Module]
    train: Callable[[nn.Module, torch.device, bool], dict]
    version: str = "1"
    description: str = ""
    extra: dict = field(default_factory=dict)


ZOO: Registry[ZooEntry] = Registry(
    "zoo model", autoload=("robustkit.models", "robustkit.data", "robustkit.defenses")
)


def register_zoo(entry: ZooEntry) -> ZooEntry:
    ZOO.register(entry.name)(lambda: entry)
    return entry


def cache_dir() -> Path:
    root = os.environ.get("ROBUSTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "robustkit"
    )
    return Path(root) / "zoo"


def _key(entry: ZooEntry) -> str:
    blob = json.dumps(
        {"name": entry.name, "version": entry.version, "torch": torch.__version__.split("+")[0]}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def zoo_path(name: str) -> Path:
    entry = ZOO.create(name)
    return cache_dir() / f"{name}-{_key(entry)}.safetensors"


def load_zoo_model(name: str, device: torch.device | str = "cpu", progress: bool = True) -> nn.Module:
    entry = ZOO.create(name)
    path = zoo_path(name)
    meta_path = path.with_suffix(".json")
    model = entry.build()
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") == sha256(path):
            return load_into(model, path).to(device).eval()
        log.warning("cached weights %s fail their checksum; retraining", path)
    log.info("training zoo model '%s' on first use (cached in %s)", name, path.parent)
    dev = torch.device(device)
    figures = entry.train(model, dev, progress)
    digest = save_weights(model, path, metadata={"zoo": name})
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "name": name,
                "sha256": digest,
                "figures": figures,
                "entry": asdict(entry) | {"build": None, "train": None},
            },
            default=str,
            indent=2,
        )
    )
    os.replace(tmp, meta_path)
    return model.to(device).eval()


def zoo_figures(name: str) -> dict:
    meta = zoo_path(name).with_suffix(".json")
    return json.loads(meta.read_text()).get("figures", {}) if meta.exists() else {}


SMALL_MEAN = (0.5, 0.5, 0.5)
SMALL_STD = (0.25, 0.25, 0.25)


def register_small_resnet(
    name: str,
    dataset: str,
    load: Callable[[str], torch.utils.data.Dataset],
    num_classes: int,
    *,
    seed: int,
    epochs: int,
    description: str,
) -> ZooEntry:
    """A zoo entry for a built-in 32x32 dataset: ``SmallResNet`` (width 16) behind
    ``Normalized(0.5, 0.25)``, initial weights from ``seed``, standard training for ``epochs`` on
    ``load("train")``, clean accuracy measured on ``load("test")``."""

    def build() -> nn.Module:
        torch.manual_seed(seed)  # deterministic initial weights; only at build time, not in attacks
        return Normalized(SmallResNet(num_classes=num_classes, width=16), SMALL_MEAN, SMALL_STD)

    def train(model: nn.Module, device: torch.device, progress: bool) -> dict:
        from ..defenses.training import TrainConfig, accuracy, fit

        cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.1)
        stats = fit(model, load("train"), cfg, device, desc=f"training {name}", progress=progress)
        stats["clean_test_accuracy"] = accuracy(model, load("test"), device)
        return stats

    return register_zoo(
        ZooEntry(name=name, dataset=dataset, build=build, train=train, description=description)
    )


def _shapes(split: str) -> torch.utils.data.Dataset:
    from ..data.shapes import shapes

    return shapes(split)


register_small_resnet(
    "shapes-resnet",
    "shapes",
    _shapes,
    10,
    seed=0,
    epochs=6,
    description="Compact ResNet (16-32-64-128 channels) for 32x32 shapes, standard training.",
)


class ZooSource(ModelSource):
    """Zoo names: the built-in models, trained on first use."""

    scheme = "zoo"

    def claims(self, spec: str) -> bool:
        return spec.removeprefix("zoo:") in ZOO

    def resolve(self, spec: str, request: ModelRequest) -> Resolved:
        name = spec.removeprefix("zoo:")
        model = load_zoo_model(name, device=request.device, progress=request.progress)
        return Resolved(model, {"kind": "zoo", "name": name})

    def names(self) -> list[str]:
        return ZOO.names()

    def default_for(self, dataset: str) -> str | None:
        return next((n for n in ZOO.names() if ZOO.create(n).dataset == dataset), None)


register_source(ZooSource(), first=True)
