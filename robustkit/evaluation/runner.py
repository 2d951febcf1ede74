"""The evaluation runner: ``robustkit.evaluate(...)`` and ``robustkit evaluate`` are this function.

Flow: validate everything (suite, data, model) before writing anything; create or resume the run
directory; clean pass; each attack on the clean-correct samples not yet done, batch by batch, each
batch committed in one transaction; recheck every claimed success with an independent fp32 eval
forward pass and the norm bound; sanity checks; summary.json and report.html written atomically.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..device import resolve_device
from ..errors import ConfigError, RunExistsError
from . import distributed
from .execute import chunks, get_batch, preflight, run_suite
from .files import atomic_write, inside, safe_name
from .metrics import summarize
from .store import Store
from .suite import Suite, SuiteEntry, load_suite

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
STORE_FILE = "results.sqlite"
IDENTITY_KEYS = ("model", "weights", "data", "data_root", "split", "suite", "limit", "seed")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    report: Path | None

    @property
    def clean_accuracy(self) -> float:
        return self.summary["clean_accuracy"]

    @property
    def robust_accuracy(self) -> float:
        return self.summary["robust_accuracy"]


def _spec_name(spec: Any) -> str:
    if spec is None or isinstance(spec, str):
        return str(spec)
    return type(spec).__name__


def _provenance(device: torch.device) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "robustkit",
        "torch",
        "torchvision",
        "kornia",
        "timm",
        "adversarial-robustness-toolbox",
        "numpy",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    dev = str(device)
    if device.type == "cuda":
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": dev,
        "cpu_threads": torch.get_num_threads(),
    }


def _prepare_dir(
    out: Path, name: str, config: dict[str, Any], overwrite: bool, rank: int = 0
) -> tuple[Path, bool]:
    run_dir = inside(out, safe_name(name))
    if rank != 0:  # rank 0 decides and prepares; the others wait for it at the next barrier
        return run_dir, True
    identity = {k: config.get(k) for k in IDENTITY_KEYS}
    cfg_path = run_dir / CONFIG_FILE
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif cfg_path.exists():
            old = yaml.safe_load(cfg_path.read_text()) or {}
            old_identity = {k: old.get(k) for k in IDENTITY_KEYS}
            if old_identity != identity:
                diff = [k for k in IDENTITY_KEYS if old_identity.get(k) != identity.get(k)]
                raise RunExistsError(
                    f"run directory {run_dir} holds a different run (differs in: {', '.join(diff)}). "
                    "Pick another --name, or pass --overwrite to start over."
                )
            return run_dir, True
        else:
            raise RunExistsError(f"{run_dir} exists and is not a robustkit run; pick another --name or --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False


def _fit_universal(
    entry: SuiteEntry,
    model: nn.Module,
    data_spec: Any,
    data_root: Any,
    seed: int,
    index: int,
    device: torch.device,
):
    """Universal attacks (patch) are fitted once on the training split, then applied per batch."""
    from ..data.loading import load_dataset

    attack = entry.attack
    n = int(getattr(attack, "train_samples", 256))
    try:
        train = load_dataset(data_spec, "train", root=data_root, n=n)
    except (ConfigError, ValueError):
        log.warning("%s: no train split; fitting on the evaluation data", entry.name)
        train = load_dataset(data_spec, "test", root=data_root, n=n)
    xs, ys = get_batch(train, list(range(min(n, len(train)))))
    g = torch.Generator().manual_seed(seed * 7919 + index)
    return attack.fit(model, xs.to(device), ys.to(device), generator=g)


def _multi_clip(net: nn.Module, info: dict[str, Any], dataset: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Multi-clip video samples ``(C, clips * frames, H, W)``: predict (and attack) through the
    average of the logits over the clips, the same path for the gradient and the prediction."""
    from ..models.video import MultiClip

    clips = int(getattr(dataset, "clips", 1) or 1)
    if clips <= 1 or isinstance(net, MultiClip):
        return net, info
    return MultiClip(net, clips, getattr(dataset, "frames", None)), {**info, "multi_clip": clips}


def evaluate(
    model: Any = None,
    data: Any = "shapes",
    suite: str | dict | Suite = "quick",
    *,
    out: str | Path = "reports",
    name: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    limit: int | None = None,
    seed: int = 0,
    weights: str | Path | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    gallery: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    model_name: str | None = None,
    defense_info: dict[str, Any] | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    amp: str | None = None,
    fold_bn: bool = False,
    profile: bool = False,
) -> RunResult:
    """Evaluate ``model`` on ``data`` under ``suite`` and write the run directory. Returns the summary.

    ``model_name`` names a model given as a Python object; ``defense_info`` (from
    ``robustkit.evaluation.defended.honor``) records a defense's capabilities and how they were honored.
    ``fold_bn`` / ``channels_last`` / ``compile`` / ``amp`` ('bf16'): the attacks' fast path
    (``robustkit.models.fastpath``; successes are still rechecked in fp32); ``profile`` writes
    ``profile.json`` (time per attack and pass counts, ``robustkit.evaluation.profile``) and adds it to the summary.

    Started by ``torchrun``, every rank evaluates its shard and rank 0 merges and renders.
    """
    from ..data.loading import load_dataset
    from ..models.loading import load_model

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive integer, got {limit!r}")
    suite_obj = suite if isinstance(suite, Suite) else load_suite(suite)
    rank, size, local_rank = distributed.world()
    dev = resolve_device(device)
    if size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
    distributed.init(dev)
    dataset = load_dataset(data, split, root=data_root)
    classes = list(getattr(dataset, "classes", []))
    data_name = data if isinstance(data, str) else getattr(dataset, "name", type(dataset).__name__)
    if rank != 0:
        distributed.barrier()  # rank 0 trains or loads zoo weights first; the others read its cache
    net, model_info = load_model(
        model,
        dataset=data_name if isinstance(data, str) else None,
        weights=weights,
        num_classes=len(classes) or None,
        device=dev,
        progress=progress and rank == 0,
    )
    if rank == 0:
        distributed.barrier()
    net, model_info = _multi_clip(net, model_info, dataset)
    n_total = len(dataset)
    if n_total == 0:
        raise ConfigError(f"dataset '{data_name}' ({split}) is empty")
    indices = list(range(min(n_total, limit) if limit else n_total))
    preflight(net, dataset, indices, len(classes) or None, dev)
    from ..models.fastpath import make_fastpath

    fast = make_fastpath(channels_last, compile, amp, fold_bn)
    model_name = model_name or model_info.get("name", _spec_name(model))
    config = {
        "model": model_name,
        "weights": str(weights) if weights else None,
        "data": str(data_name),
        "data_root": str(data_root) if data_root else None,
        "split": split,
        "suite": suite_obj.resolved(),
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(dev),
        "gallery": gallery,
    }
    if fast.active:
        config["fastpath"] = fast.as_dict()
    run_name = name or f"{safe_name(model_name)}-{safe_name(str(data_name))}-{safe_name(suite_obj.name)}"
    run_dir, resumed = _prepare_dir(Path(out), run_name, config, overwrite and rank == 0, rank)
    if rank == 0 and not resumed:
        atomic_write(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    distributed.barrier()
    batches = chunks(indices, batch_size)
    store_path = run_dir / (STORE_FILE if size == 1 else f"results.rank{rank}.sqlite")
    store = Store(store_path)
    started = time.perf_counter()
    failed = True
    try:
        if store.meta("started_at") is None:
            store.set_meta("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        store.set_meta(
            "run",
            {
                "name": run_name,
                "model": model_info,
                "data": str(data_name),
                "split": split,
                "classes": classes,
                "suite": suite_obj.name,
                "seed": seed,
                "limit": limit,
                "world_size": size,
            },
        )
        store.set_meta("provenance", _provenance(dev))
        if defense_info is not None:
            store.set_meta("defense", defense_info)
        if resumed:
            log.info("resuming run in %s", run_dir)
        mine = distributed.shard(batches, rank, size)
        work = sum(len(c) for c in mine) * (1 + len(suite_obj.entries))
        with tqdm(
            total=work, unit="sample", disable=None if progress and rank == 0 else True, dynamic_ncols=True
        ) as bar:

            def fit(entry: SuiteEntry, k: int):
                return _fit_universal(entry, net, data, data_root, seed, k, dev)

            run_suite(store, fast.precisions(net), dataset, mine, suite_obj, dev, seed, gallery, bar, fit)
        store.set_meta("elapsed", store.meta("elapsed", 0.0) + (time.perf_counter() - started))
        failed = False
    finally:
        store.close()
        if distributed.broadcast_error(failed) and not failed:
            raise RuntimeError("another rank failed; this rank's shard is saved and the run can be resumed")
    if size > 1:
        distributed.barrier()
        if rank == 0:
            distributed.merge(
                [run_dir / f"results.rank{r}.sqlite" for r in range(size)], run_dir / STORE_FILE
            )
    if rank == 0:
        summary = _finish(
            run_dir=run_dir,
            net=net,
            dataset=dataset,
            indices=indices,
            dev=dev,
            classes=classes,
            run_name=run_name,
            model_name=model_name,
            data_name=data_name,
            suite_obj=suite_obj,
            seed=seed,
            defense_info=defense_info,
        )
    distributed.barrier()
    if rank != 0:
        summary = json.loads((run_dir / "summary.json").read_text())
    if profile and rank == 0:
        from .profile import profile_run

        px, py = get_batch(dataset, indices[:batch_size])
        summary["profile"] = profile_run(run_dir, net, px.to(dev), py.to(dev))
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    report_path = None
    if report and rank == 0:
        from ..report import render_report

        report_path = render_report([run_dir], run_dir / "report.html")
    return RunResult(run_dir=run_dir, summary=summary, report=report_path)


def _finish(
    *,
    run_dir,
    net,
    dataset,
    indices,
    dev,
    classes,
    run_name,
    model_name,
    data_name,
    suite_obj,
    seed,
    defense_info=None,
) -> dict[str, Any]:
    """Sanity checks and summary from the (merged) store; summary.json written atomically."""
    store = Store(run_dir / STORE_FILE)
    try:
        _sanity(store, net, dataset, indices, dev)
        store.set_meta("finished_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        elapsed = store.meta("elapsed", 0.0)
        summary = summarize(store, classes)
        summary.update(
            run=run_name,
            model=model_name,
            data=str(data_name),
            suite=suite_obj.name,
            seed=seed,
            device=str(dev),
            seconds=elapsed,
            findings=store.findings(),
            skipped_files=list(getattr(dataset, "skipped", [])),
            oom_backoffs=store.meta("oom_backoffs") or [],
        )
        if defense_info is not None:
            summary["defense"] = defense_info
    finally:
        store.close()
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _cascades(store: Store) -> list[list[dict[str, Any]]]:
    """Every batch's ensemble cascade (AutoAttack's ``cascade`` artifact), for the black-box check."""
    return [
        cascade for attack in store.attacks() for cascade in store.json_artifacts(attack["id"], "cascade")
    ]


def _sanity(store: Store, net, dataset, indices, dev) -> None:
    """Runner-level findings, plus the sanity-check module's when it is present."""
    findings = []
    summary = summarize(store)
    bad = [a["name"] for a in summary["attacks"] if a["claimed_not_confirmed"]]
    findings.append(
        (
            "claimed-success-recheck",
            "warn" if bad else "pass",
            f"attacks whose claimed successes failed the fp32 recheck: {', '.join(bad)}"
            if bad
            else "every claimed success was confirmed by an independent fp32 forward pass",
            "An attack reported success that an independent eval-mode fp32 pass does not confirm: the model may be "
            "stochastic or numerically unstable (bf16?). Those samples count as robust.",
        )
    )
    try:
        from . import sanity
    except ImportError:
        sanity = None
    if sanity is not None and hasattr(sanity, "run_sanity_checks"):
        x, y = get_batch(dataset, indices[: min(len(indices), 64)])
        context = {"summary": summary, "device": dev, "cascade": _cascades(store)}
        for f in sanity.run_sanity_checks(net, x.to(dev), y.to(dev), context=context):
            findings.append((f.name, f.status, f.evidence, f.advice))
    store.write_findings(findings)
