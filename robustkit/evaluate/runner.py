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
from ..functional.random import sample_generators
from ..validate import check_inputs, check_logits
from .files import atomic_write, inside, safe_name
from .metrics import summarize
from .store import Store, pack_tensors
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


def _batch(ds: Any, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "x") and hasattr(ds, "y"):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.x[idx], ds.y[idx]
    items = [ds[i] for i in indices]
    return torch.stack([t[0] for t in items]), torch.as_tensor([int(t[1]) for t in items], dtype=torch.long)


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


def _prepare_dir(out: Path, name: str, config: dict[str, Any], overwrite: bool) -> tuple[Path, bool]:
    run_dir = inside(out, safe_name(name))
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


def _norm_ok(entry: SuiteEntry, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    threat = getattr(entry.attack, "threat", None)
    if (
        threat is None
        or not hasattr(threat, "within")
        or not (0 < getattr(threat, "eps", float("inf")) < float("inf"))
    ):
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return threat.within((x_adv - x).flatten(1).float(), tol=1e-4)


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
        train = load_dataset(data_spec, "train", root=data_root)
    except (ConfigError, ValueError):
        log.warning("%s: no train split; fitting on the evaluation data", entry.name)
        train = load_dataset(data_spec, "test", root=data_root)
    xs, ys = _batch(train, list(range(min(n, len(train)))))
    g = torch.Generator().manual_seed(seed * 7919 + index)
    return attack.fit(model, xs.to(device), ys.to(device), generator=g)


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
) -> RunResult:
    """Evaluate ``model`` on ``data`` under ``suite`` and write the run directory. Returns the summary."""
    from ..data.loading import load_dataset
    from ..models.loading import load_model

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive integer, got {limit!r}")
    suite_obj = suite if isinstance(suite, Suite) else load_suite(suite)
    dev = resolve_device(device)
    dataset = load_dataset(data, split, root=data_root)
    classes = list(getattr(dataset, "classes", []))
    data_name = data if isinstance(data, str) else getattr(dataset, "name", type(dataset).__name__)
    net, model_info = load_model(
        model,
        dataset=data_name if isinstance(data, str) else None,
        weights=weights,
        num_classes=len(classes) or None,
        device=dev,
        progress=progress,
    )
    n_total = len(dataset)
    if n_total == 0:
        raise ConfigError(f"dataset '{data_name}' ({split}) is empty")
    indices = list(range(min(n_total, limit) if limit else n_total))
    model_name = model_info.get("name", _spec_name(model))
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
    run_name = name or f"{safe_name(model_name)}-{safe_name(str(data_name))}-{safe_name(suite_obj.name)}"
    run_dir, resumed = _prepare_dir(Path(out), run_name, config, overwrite)
    if not resumed:
        atomic_write(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    store = Store(run_dir / STORE_FILE)
    try:
        started = time.perf_counter()
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
            },
        )
        store.set_meta("provenance", _provenance(dev))
        if resumed:
            log.info("resuming run in %s", run_dir)
        _run(
            store, net, dataset, indices, suite_obj, dev, batch_size, seed, gallery, progress, data, data_root
        )
        _sanity(store, net, dataset, indices, dev)
        elapsed = store.meta("elapsed", 0.0) + (time.perf_counter() - started)
        store.set_meta("elapsed", elapsed)
        store.set_meta("finished_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
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
        )
    finally:
        store.close()
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    report_path = None
    if report:
        from ..report import render_report

        report_path = render_report([run_dir], run_dir / "report.html")
    return RunResult(run_dir=run_dir, summary=summary, report=report_path)


def _run(
    store: Store,
    net,
    dataset,
    indices,
    suite: Suite,
    dev,
    batch_size,
    seed,
    gallery,
    progress,
    data_spec,
    data_root,
) -> None:
    num_classes = len(getattr(dataset, "classes", [])) or None
    todo_clean = [i for i in indices if i not in store.clean_done()]
    work = len(todo_clean) + len(indices) * len(suite.entries)
    bar = tqdm(
        total=work, desc="clean", unit="sample", disable=None if progress else True, dynamic_ncols=True
    )
    bar.update(len(indices) - len(todo_clean))
    for s in range(0, len(todo_clean), batch_size):
        chunk = todo_clean[s : s + batch_size]
        x, y = _batch(dataset, chunk)
        check_inputs(x, f"data[{chunk[0]}:{chunk[-1] + 1}]")
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = net(x.to(dev)).float()
        check_logits(logits, len(chunk), num_classes)
        prob = logits.softmax(1)
        pred = logits.argmax(1).cpu()
        conf = prob.max(1).values.cpu()
        rows = [
            (i, int(y[j]), int(pred[j]), bool(pred[j] == y[j]), float(conf[j])) for j, i in enumerate(chunk)
        ]
        store.write_clean(
            rows, ("clean", chunk[0], len(chunk), time.perf_counter() - t0, "{}", json.dumps(chunk))
        )
        bar.update(len(chunk))
    correct = {i: bool(c) for i, _, _, c, _ in store.samples()}
    for k, entry in enumerate(suite.entries):
        bar.set_description(entry.name)
        kind = getattr(entry.attack, "input_kind", "image")
        aid = store.attack_id(
            entry.name, entry.attack_key, suite.resolved()["attacks"][k], entry.eps, entry.norm, kind
        )
        done = store.attacked(aid)
        bar.update(len(done))
        skip = [i for i in indices if i not in done and not correct[i]]
        if skip:  # misclassified clean samples are not robust; no attack needed
            labels = {i: (y, p, f) for i, y, p, _, f in store.samples()}
            rows = [(i, 0, 0, 0, labels[i][1], labels[i][2], None, None, None) for i in skip]
            store.write_outcomes(aid, rows, (entry.name, -1 - skip[0], len(skip), 0.0, "{}", "[]"), {}, {})
            bar.update(len(skip))
        pending = [i for i in indices if i not in done and correct[i]]
        if not pending:
            continue
        attack = entry.attack
        if callable(getattr(attack, "fit", None)):
            attack = _fit_universal(entry, net, data_spec, data_root, seed, k, dev)
        for s in range(0, len(pending), batch_size):
            chunk = pending[s : s + batch_size]
            _attack_batch(store, aid, entry, attack, net, dataset, chunk, dev, seed, k, gallery)
            bar.update(len(chunk))
    bar.close()


def _attack_batch(
    store: Store, aid: int, entry: SuiteEntry, attack, net, dataset, chunk, dev, seed, k, gallery
) -> None:
    x, y = _batch(dataset, chunk)
    x, y = x.to(dev), y.to(dev)
    gens = sample_generators(seed, chunk, salt=k + 1)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    result = attack(net, x, y, generator=gens)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    x_adv = result.x_adv.detach()
    with torch.no_grad():  # independent fp32 recheck in eval mode
        was = net.training if isinstance(net, nn.Module) else False
        if isinstance(net, nn.Module):
            net.eval()
        logits = net(x_adv.float()).float()
        if isinstance(net, nn.Module):
            net.train(was)
    pred = logits.argmax(1)
    conf = logits.softmax(1).max(1).values
    within = _norm_ok(entry, x, x_adv)
    robust = (pred == y) | ~within
    diff = (x_adv - x).flatten(1).float()
    linf, l2 = diff.abs().amax(1), diff.norm(dim=1)
    metrics = {
        key: v.detach().float().cpu()
        for key, v in result.metrics.items()
        if isinstance(v, torch.Tensor) and v.shape[:1] == (len(chunk),)
    }
    claimed = result.success.bool().cpu()
    rows = []
    for j, i in enumerate(chunk):
        m = {key: float(v[j]) for key, v in metrics.items()}
        if not bool(within[j]):
            m["norm_violation"] = 1.0
        rows.append(
            (
                i,
                1,
                int(claimed[j]),
                int(robust[j]),
                int(pred[j]),
                float(conf[j]),
                float(linf[j]),
                float(l2[j]),
                json.dumps(m) if m else None,
            )
        )
    artifacts = {}
    for key, value in result.artifacts.items():
        if isinstance(value, torch.Tensor):
            artifacts[key] = ("tensor", pack_tensors({key: value}))
        else:
            try:
                artifacts[key] = ("json", json.dumps(value, default=_tensor_json).encode())
            except (TypeError, ValueError):
                log.debug("artifact %s of %s is not storable; skipped", key, entry.name)
    examples = {}
    for j, i in enumerate(chunk):
        if i < gallery:
            examples[i] = pack_tensors(
                {
                    "clean": (x[j] * 255).round().to(torch.uint8),
                    "adv": (x_adv[j].clamp(0, 1) * 255).round().to(torch.uint8),
                }
            )
    store.write_outcomes(
        aid,
        rows,
        (entry.name, chunk[0], len(chunk), seconds, json.dumps(result.counters), json.dumps(chunk)),
        artifacts,
        examples,
    )


def _tensor_json(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    raise TypeError(type(v).__name__)


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
            "An attack reported success that an independent eval-mode fp32 pass does not confirm: the model may be stochastic or numerically unstable (bf16?). Those samples count as robust.",
        )
    )
    try:
        from . import sanity
    except ImportError:
        sanity = None
    if sanity is not None and hasattr(sanity, "run_sanity_checks"):
        x, y = _batch(dataset, indices[: min(len(indices), 64)])
        context = {"summary": summary, "device": dev}
        for f in sanity.run_sanity_checks(net, x.to(dev), y.to(dev), context=context):
            findings.append((f.name, f.status, f.evidence, f.advice))
    store.write_findings(findings)
