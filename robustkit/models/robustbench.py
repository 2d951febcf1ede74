"""RobustBench's model zoo by name: ``robustbench:<dataset>/<threat>/<name>``.

The architecture comes from the ``robustbench`` package's model zoo (``robustbench.model_zoo.model_dicts``;
``pip install robustbench``). The checkpoint is read from RobustBench's own cache layout,
``<models dir>/<dataset>/<threat>/<name>.pt`` (ensembles: ``<name>.pt_m<i>.pt``), where
``robustbench.utils.load_model`` keeps it. The models dir is RobustBench's default, ``./models``, or
``$ROBUSTKIT_ROBUSTBENCH_DIR``. The checkpoint is read with ``torch.load(weights_only=True)`` and unwrapped as
RobustBench does (``state_dict`` / ``last`` keys, ``module.`` and ``model.`` prefixes), every parameter
loaded; the input normalization stays inside RobustBench's models (they take [0, 1] input). Zoo entries
that RobustBench registers as timm models go through timm's pretrained loader.

A missing checkpoint is downloaded through RobustBench's own downloader when it and the network are
there; otherwise it is a :class:`~robustkit.errors.ModelError` naming the file expected and where to get it.

``robustbench/__init__.py`` imports its evaluation code (AutoAttack, pandas, ``pkg_resources``, which
setuptools >= 81 no longer ships); when that import fails, the model zoo subpackage is imported on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import suggest
from .checkpoint import load_state, load_state_into
from .inputsize import input_record
from .pretrained import weights_only_loads

log = logging.getLogger(__name__)

CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
INPUT_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}
DIR_VARIABLE = "ROBUSTKIT_ROBUSTBENCH_DIR"
INSTALL = "pip install robustbench (robustkit[robustbench]); its model zoo defines the architectures"


def models_dir() -> Path:
    """RobustBench's checkpoint folder: ``$ROBUSTKIT_ROBUSTBENCH_DIR``, else RobustBench's ``./models``."""
    return Path(os.environ.get(DIR_VARIABLE) or "models").expanduser()


def zoo() -> tuple[dict, type, type]:
    """(``model_dicts``, ``BenchmarkDataset``, ``ThreatModel``) of the installed ``robustbench``."""
    if importlib.util.find_spec("robustbench") is None:
        raise ConfigError(f"--model robustbench:...: the robustbench package is not installed; {INSTALL}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its timm imports use deprecated paths
        try:
            importlib.import_module("robustbench")
        except ImportError as exc:  # its evaluation code's dependencies; the zoo needs none of them
            log.debug("robustbench's package init failed (%s); importing its model zoo alone", exc)
            spec = importlib.util.find_spec("robustbench")
            package = types.ModuleType("robustbench")
            package.__path__ = list(spec.submodule_search_locations or [])  # type: ignore[union-attr]
            package.__spec__ = spec
            sys.modules["robustbench"] = package
        try:
            models = importlib.import_module("robustbench.model_zoo.models")
            enums = importlib.import_module("robustbench.model_zoo.enums")
        except ImportError as exc:
            raise ConfigError(f"robustbench's model zoo cannot be imported ({exc}); {INSTALL}") from exc
    return models.model_dicts, enums.BenchmarkDataset, enums.ThreatModel


def _member(enum: type, text: str, what: str, spec: str) -> Any:
    by_name = {m.value.lower(): m for m in enum}  # type: ignore[attr-defined]
    if text.lower() not in by_name:
        values = [m.value for m in enum]  # type: ignore[attr-defined]
        raise ConfigError(
            f"--model {spec}: RobustBench has no {what} '{text}'{suggest(text, values)}; expected one of "
            f"{', '.join(values)}"
        )
    return by_name[text.lower()]


def parse(spec: str) -> tuple[str, str, str]:
    """``robustbench:<dataset>/<threat>/<name>`` as (dataset, threat, name)."""
    parts = spec.removeprefix("robustbench:").split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(
            f"--model {spec}: expected robustbench:<dataset>/<threat>/<name>, e.g. robustbench:cifar10/Linf/Standard"
        )
    return parts[0], parts[1], parts[2]


def checkpoint_paths(dataset: str, threat: str, name: str, members: int = 1) -> list[Path]:
    """The files RobustBench's ``load_model`` keeps the checkpoint of ``name`` in (one per ensemble member)."""
    path = models_dir() / dataset / threat / f"{name}.pt"
    return [path] if members == 1 else [Path(f"{path}_m{i}.pt") for i in range(members)]


def download(gdrive_id: str, path: Path) -> None:
    """RobustBench's own downloader (``robustbench.utils.download_gdrive_new``; needs its ``gdown``)."""
    from robustbench.utils import download_gdrive_new

    path.parent.mkdir(parents=True, exist_ok=True)
    download_gdrive_new(gdrive_id, path)


def _fetch(paths: list[Path], ids: list[str], spec: str, name: str, dataset: str, threat: str) -> None:
    """Download missing checkpoints with RobustBench's own downloader, or say what to put where."""
    missing = [(p, i) for p, i in zip(paths, ids, strict=True) if not p.is_file()]
    if not missing:
        return
    try:
        for path, gid in missing:
            download(gid, path)
        if all(p.is_file() for p in paths):
            return
        problem: Exception | None = None
    except Exception as exc:  # no downloader (its dependencies) or no network: say what to do instead
        problem = exc
    path, gid = next((p, i) for p, i in missing if not p.is_file())
    why = f" ({type(problem).__name__}: {problem})" if problem else ""
    raise ModelError(
        f"--model {spec}: RobustBench's checkpoint is not in its cache and could not be downloaded{why}. "
        f"Expected the file {path}: download https://drive.google.com/uc?id={gid} on a machine with network "
        f"(or there run: python -c \"from robustbench.utils import load_model; load_model('{name}', "
        f"dataset='{dataset}', threat_model='{threat}')\", which saves it as models/{dataset}/{threat}/"
        f"{path.name}) and put it at {path}; or set {DIR_VARIABLE} to the folder that holds {dataset}/{threat}/"
    )


def load_robustbench(
    spec: str, *, num_classes: int | None = None, progress: bool = True
) -> tuple[nn.Module, dict]:
    """(model in eval mode, info) for ``robustbench:<dataset>/<threat>/<name>``."""
    dataset_text, threat_text, name = parse(spec)
    model_dicts, datasets, threats = zoo()
    dataset = _member(datasets, dataset_text, "dataset", spec)
    threat = _member(threats, threat_text.replace("_3d", ""), "threat model", spec)
    entries = model_dicts.get(dataset, {}).get(threat, {})
    if name not in entries:
        raise ConfigError(
            f"--model {spec}: RobustBench's {dataset.value}/{threat.value} zoo has no model '{name}'"
            f"{suggest(name, list(entries))} ({len(entries)} models)"
        )
    classes = CLASSES.get(dataset.value)
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ModelError(
            f"--model {spec} is a {dataset.value} model with {classes} classes but the data has {num_classes}: "
            f"evaluate it on {dataset.value} (--data {dataset.value})"
        )
    info: dict[str, Any] = {
        "kind": "robustbench",
        "name": spec,
        "robustbench": {"dataset": dataset.value, "threat_model": threat.value, "name": name},
        "input_size": INPUT_SIZE.get(dataset.value),
        **(
            {"input": input_record(INPUT_SIZE[dataset.value], f"RobustBench's {dataset.value} models")}
            if dataset.value in INPUT_SIZE
            else {}
        ),
        "normalization": {
            "mean": None,
            "std": None,
            "source": "none added (RobustBench's models take [0, 1] input)",
        },  # fmt: skip
    }
    entry = entries[name]
    timm_name = f"{name.lower().replace('-', '_')}_{dataset.value.lower()}_{threat.value.lower()}"
    import timm

    if timm.is_model(timm_name):  # RobustBench registered it with timm: timm's pretrained loader and caches
        from .pretrained import timm_pretrained

        model, extra = timm_pretrained(spec, timm_name, classes)
        extra.pop("normalization_default")
        return model.eval(), {**info, **extra}
    ids = entry.get("gdrive_id")
    if ids is None:
        raise ModelError(f"--model {spec}: RobustBench lists no checkpoint for '{name}'")
    with weights_only_loads():
        try:
            model = entry["model"]()
        except Exception as exc:  # ImageNet 'Standard' entries build torchvision's pretrained weights
            raise ModelError(
                f"--model {spec}: RobustBench's builder for '{name}' failed ({type(exc).__name__}: {exc}); if it "
                f"needs torchvision's pretrained weights, put them in torch.hub's cache (TORCH_HOME)"
            ) from exc
    if dataset.value == "imagenet" and "Standard" in name:  # RobustBench's own rule: torchvision's weights
        return model.eval(), info
    ids = ids if isinstance(ids, list) else [ids]
    paths = checkpoint_paths(dataset.value, threat.value, name, len(ids))
    _fetch(paths, ids, spec, name, dataset.value, threat.value)
    if len(paths) == 1:
        load_state_into(model, load_state(paths[0]), str(paths[0]), lenient=True)
    elif isinstance(getattr(model, "models", None), nn.ModuleList | list) and len(model.models) == len(paths):
        for member, path in zip(model.models, paths, strict=True):
            load_state_into(member, load_state(path), str(path), lenient=True)
    else:
        raise ConfigError(
            f"--model {spec}: '{name}' is a composite model whose checkpoints robustkit cannot place; load it "
            "with robustbench.utils.load_model and pass the module to robustkit.evaluate(model=...)"
        )
    info["weights"] = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    return model.eval(), info
