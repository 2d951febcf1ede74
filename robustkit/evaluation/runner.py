"""The evaluation runner: ``run(config)`` evaluates one :class:`RunConfig` into its run directory.

Flow: validate everything (the configuration, data, model) before writing anything; adapt the model to
how it is deployed (``robustkit.defenses.adaptive.adapt``: a ``Defense`` as given, any other model as
``as_defense`` with ``config.capabilities``; its mode is never changed); create or resume the run
directory (``RunConfig.identity()`` decides); clean pass; each attack (EOT inside the gradient attacks
of a stochastic model) in each view of the defense on the samples not yet done, batch by batch, each
batch committed in one transaction; recheck every claimed success with an independent fp32 forward pass
of the deployed model and the norm bound; sanity checks; summary.json written atomically (robust
accuracy: the worst view). The report is rendered above this layer (``robustkit.api``).
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
from torch import nn

from ..attacks.base import accepts
from ..defenses.adaptive import Adapted, adapt
from ..defenses.base import Defense
from ..device import resolve_device
from ..errors import ConfigError, RunExistsError
from ..files import atomic_write, inside, is_temporary, safe_name, storage_error
from ..models.fastpath import Precisions
from ..models.state import preserved
from . import distributed
from .config import CONFIG_FILE, RunConfig
from .execute import Job, chunks, get_batch, get_objects, preflight, run_suite, view_name
from .inputs import fit_to_model, model_input
from .metrics import chance_finding, summarize
from .profile import profile_run
from .progress import Progress
from .store import STORE_FILE, Store
from .suite import SuiteEntry

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    report: Path | None = None

    @property
    def clean_accuracy(self) -> float:
        return self.summary["clean_accuracy"]

    @property
    def robust_accuracy(self) -> float:
        return self.summary["robust_accuracy"]

    def adversarial(self, attack: str, *, successful_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, x_adv) of ``attack`` (needs ``keep_adversarial=True``; ``adversarial.load_adversarial``)."""
        from .adversarial import load_adversarial

        return load_adversarial(self.run_dir, attack, successful_only=successful_only)


@dataclass(frozen=True)
class Loaded:
    """What loading a configuration found: the model, the data, the device and this process's rank."""

    net: nn.Module
    model_info: dict[str, Any]
    model_name: str
    dataset: Any
    data_name: str
    classes: list[str]
    indices: list[int]
    device: torch.device
    rank: int
    size: int
    adapted: Adapted
    # whether the run says how the defense was adapted (a Defense, declared or detected capabilities,
    # more than one view); a plain batch-independent model's run stays as it always was
    adaptive: bool = False
    # the input size of a folder given as data and where it came from (``evaluation.inputs``)
    input: dict[str, Any] | None = None

    @property
    def run_name(self) -> str:
        return f"{safe_name(self.model_name)}-{safe_name(self.data_name)}"

    def names(self, config: RunConfig) -> list[str]:
        """The store names of every (suite entry, view)."""
        return [view_name(e.name, v) for e in config.suite.entries for v in self.adapted.views]


def default_run_name(config: RunConfig, loaded: Loaded) -> str:
    """``MODEL-DATA-SUITE``, and with a weights file the first 8 hex digits of its SHA-256: other weights
    for the same model get a run of their own instead of being refused as a different configuration."""
    name = f"{loaded.run_name}-{safe_name(config.suite.name)}"
    return f"{name}-{config.weights_sha256[:8]}" if config.weights_sha256 else name


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


def _load(config: RunConfig) -> Loaded:
    """Device, data and model, checked on a few samples before anything is written."""
    from ..data.loading import load_dataset
    from ..models.loading import load_model

    rank, size, local_rank = distributed.world()
    dev = resolve_device(config.device)
    if size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
    distributed.init(dev)
    data = config.data
    dataset = load_dataset(data, config.split, root=config.data_root)
    classes = list(getattr(dataset, "classes", []))
    # a manifest's (a folder's) own name names the data; a built-in dataset's name is its own
    data_name = getattr(dataset, "name", None) or (data if isinstance(data, str) else type(dataset).__name__)
    if rank != 0:
        distributed.barrier()  # rank 0 trains or loads zoo weights first; the others read its cache
    given = config.model if isinstance(config.model, Defense) else None
    if given is not None:  # a defense is evaluated as given: its mode and state stay the user's
        net, info = given.model.to(dev), {"kind": "defense", "name": given.name}
    else:
        net, info = load_model(  # a user's module keeps the mode it was given (load_model never .eval()s it)
            config.model,
            dataset=data if isinstance(data, str) else None,
            weights=config.weights,
            num_classes=len(classes) or None,
            device=dev,
            progress=config.progress and rank == 0,
            normalize=config.normalize,
            pretrained=config.pretrained,
        )
    if rank == 0:
        distributed.barrier()
    dataset, sized = fit_to_model(data, config.split, config.data_root, dataset, net, info)
    if sized is not None and rank == 0:
        log.info("%s", sized["line"])
    net, info = _multi_clip(net, info, dataset)
    n_total = len(dataset)
    if n_total == 0:
        raise ConfigError(f"dataset '{data_name}' ({config.split}) is empty")
    indices = list(range(min(n_total, config.limit) if config.limit else n_total))
    model_name = config.model_name or info.get("name", _spec_name(config.model))
    preflight(net, dataset, indices, len(classes) or None, dev, name=str(model_name))
    adapted, adaptive = _adapt(config, given, net, get_batch(dataset, indices[:4])[0].to(dev))
    for line in adapted.detected:
        log.warning(
            "%s: %s; evaluated as such (%s)", model_name, line, ", ".join(v.name for v in adapted.views)
        )
    return Loaded(adapted.model, info, model_name, dataset, str(data_name), classes, indices, dev, rank, size,
                  adapted, adaptive, sized)  # fmt: skip


def _adapt(
    config: RunConfig, given: Defense | None, net: nn.Module, probe: torch.Tensor
) -> tuple[Adapted, bool]:
    """The loaded model as a Defense (``RunConfig.defense_for``), adapted; and whether the run must say
    how (anything beyond a plain batch-independent model)."""
    defense = config.defense_for(net)
    defense.sources = {k: v.to(probe.device) for k, v in defense.sources.items()}
    with preserved(net):  # probing a model in train mode must not move its BatchNorm statistics
        adapted = adapt(defense, eot_samples=config.eot_samples, draws=config.draws, probe=probe)
    adaptive = bool(given is not None or config.declared or adapted.detected or len(adapted.views) > 1)
    return adapted, adaptive


def _remove_leftovers(run_dir: Path) -> None:
    """A directory becomes a run when its ``config.yaml`` is complete (written atomically). One holding
    only temporary files is a creation that was killed: remove them, so that the run starts normally."""
    if not run_dir.is_dir() or (run_dir / CONFIG_FILE).exists():
        return
    entries = list(run_dir.iterdir())
    if entries and all(is_temporary(e) for e in entries):
        for e in entries:
            e.unlink()
        log.warning("%s: removed %d temporary file(s) left by an interrupted start (%s)", run_dir,
                    len(entries), ", ".join(sorted(e.name for e in entries)))  # fmt: skip


def _prepare_dir(config: RunConfig, run_dir: Path, rank: int) -> bool:
    """Create the run directory, or find it resumable; True when resuming."""
    if rank != 0:  # rank 0 decides and prepares; the others wait for it at the next barrier
        return True
    try:
        _remove_leftovers(run_dir)
    except OSError as exc:
        raise storage_error(run_dir, exc) from exc
    if run_dir.exists() and any(run_dir.iterdir()):
        if config.overwrite:
            shutil.rmtree(run_dir)
        else:
            diff = config.differences(run_dir)
            if diff is None:
                raise RunExistsError(
                    f"{run_dir} exists and is not a robustkit run; pick another --name or --out"
                )
            if diff:
                raise RunExistsError(
                    f"run directory {run_dir} holds a different run (differs in: {', '.join(diff)}). "
                    "Pick another run name (--name; name= in Python), or start over with --overwrite "
                    "(overwrite=True)."
                )
            return True
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(run_dir, exc, "pick another --name or --out") from exc
    return False


def _fit_universal(entry: SuiteEntry, index: int, config: RunConfig, run: Loaded):
    """Universal attacks (patch) are fitted once on the training split, then applied per batch."""
    from ..data.loading import load_dataset

    attack = entry.attack
    n = int(getattr(attack, "train_samples", 256))
    sized = model_input(run.input)  # the training split at the evaluation data's size
    try:
        train = load_dataset(config.data, "train", root=config.data_root, n=n, model_input=sized)
    except (ConfigError, ValueError):
        log.warning("%s: no train split; fitting on the evaluation data", entry.name)
        train = load_dataset(config.data, "test", root=config.data_root, n=n, model_input=sized)
    todo = list(range(min(n, len(train))))
    xs, ys = get_batch(train, todo)
    g = torch.Generator().manual_seed(config.seed * 7919 + index)
    objects = get_objects(train, todo)  # the training objects' geometry, for patches placed on them
    placed = {"objects": objects} if objects is not None and accepts(attack.fit, "objects") else {}
    return attack.fit(run.net, xs.to(run.device), ys.to(run.device), generator=g, **placed)


def _multi_clip(net: nn.Module, info: dict[str, Any], dataset: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Multi-clip video samples ``(C, clips * frames, H, W)``: predict (and attack) through the
    average of the logits over the clips, the same path for the gradient and the prediction."""
    from ..models.video import MultiClip

    clips = int(getattr(dataset, "clips", 1) or 1)
    if clips <= 1 or isinstance(net, MultiClip):
        return net, info
    return MultiClip(net, clips, getattr(dataset, "frames", None)), {**info, "multi_clip": clips}


def run(config: RunConfig) -> RunResult:
    """Evaluate ``config`` and write its run directory (store, config.yaml, summary.json; with
    ``config.profile`` also profile.json). The returned result has no report yet.

    Started by ``torchrun``, every rank evaluates its shard and rank 0 merges.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    loaded = _load(config)
    rank, size = loaded.rank, loaded.size
    run_name = config.name or default_run_name(config, loaded)
    run_dir = inside(Path(config.out), safe_name(run_name))
    resumed = _prepare_dir(config, run_dir, rank)
    if rank == 0 and not resumed:
        config.write(run_dir, model=loaded.model_name, data=loaded.data_name, device=str(loaded.device),
                     **({"input": loaded.input["line"]} if loaded.input else {}))  # fmt: skip
    distributed.barrier()
    store = Store(run_dir / (STORE_FILE if size == 1 else f"results.rank{rank}.sqlite"))
    started = time.perf_counter()
    failed = True
    try:
        _run_shard(store, config, loaded, run_name, resumed)
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
        summary = _finish(run_dir, config, loaded, run_name)
    distributed.barrier()
    if rank != 0:
        summary = json.loads((run_dir / "summary.json").read_text())
    if config.profile and rank == 0:
        px, py = get_batch(loaded.dataset, loaded.indices[: config.batch_size])
        summary["profile"] = profile_run(run_dir, loaded.net, px.to(loaded.device), py.to(loaded.device))
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return RunResult(run_dir=run_dir, summary=summary)


def _run_shard(store: Store, config: RunConfig, loaded: Loaded, run_name: str, resumed: bool) -> None:
    """This rank's batches: clean pass and every attack, resuming from what the store holds."""
    if store.meta("started_at") is None:
        store.set_meta("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store.set_meta(
        "run",
        {
            "name": run_name,
            "model": loaded.model_info,
            "data": loaded.data_name,
            "split": config.split,
            "classes": loaded.classes,
            "suite": config.suite.name,
            "seed": config.seed,
            "limit": config.limit,
            "world_size": loaded.size,
        },
    )
    store.set_meta("provenance", _provenance(loaded.device))
    adapted = loaded.adapted
    if loaded.adaptive:
        store.set_meta("defense", adapted.record)
    if adapted.capabilities.batch_dependent:  # the batch size is part of what a batch-dependent model is
        before = store.meta("batch_size")
        if before is not None and before != config.batch_size:
            raise RunExistsError(
                f"run {run_name} evaluated a batch-dependent model in batches of {before}; resume it with "
                f"--batch-size {before}, or pass --overwrite to start over in batches of {config.batch_size}"
            )
        store.set_meta("batch_size", config.batch_size)
    mine = distributed.shard(chunks(loaded.indices, config.batch_size), loaded.rank, loaded.size)
    if resumed and loaded.rank == 0:  # only rank 0 knows whether the directory existed
        _say_resumed(store, config, run_name, [i for c in mine for i in c], loaded)
    stages = 1 + len(loaded.names(config))
    show = config.progress and loaded.rank == 0
    caps = adapted.capabilities
    with Progress(run_name, stages, sum(len(c) for c in mine), show=show) as bar:
        # a model that reads batch statistics is not folded or cast: its deployed form is the one attacked
        net = (
            Precisions.single(loaded.net) if caps.batch_dependent else config.fastpath.precisions(loaded.net)
        )
        surrogate = adapted.attack_model if adapted.attack_model is not adapted.model else None
        job = Job(store, net, loaded.dataset, loaded.device, config.seed, config.gallery, bar, adapted.views,
                  surrogate, caps.batch_dependent, adapted.draws, config.keep_adversarial)  # fmt: skip
        fit = lambda entry, k: _fit_universal(entry, k, config, loaded)  # noqa: E731
        run_suite(job, mine, config.suite, fit, adapted.adapt_attack)


def _done(store: Store, config: RunConfig, indices: list[int], loaded: Loaded) -> int:
    """How many of ``indices`` have their clean pass and every attack of the suite committed."""
    done = store.clean_done() & set(indices)
    ids = {a["name"]: a["id"] for a in store.attacks()}
    for name in loaded.names(config):
        done &= store.attacked(ids[name]) if name in ids else set()
    return len(done)


def _say_resumed(store: Store, config: RunConfig, run_name: str, indices: list[int], loaded: Loaded) -> None:
    where = f" (rank 0's shard of {loaded.size})" if loaded.size > 1 else ""
    done = _done(store, config, indices, loaded)
    if done == len(indices):
        log.info("run %s is already complete%s: all %d samples were evaluated; rewriting its summary",
                 run_name, where, done)  # fmt: skip
    else:
        log.info("resuming run %s%s from %d of %d samples", run_name, where, done, len(indices))


def _missing(summary: dict[str, Any], config: RunConfig, loaded: Loaded) -> list[str]:
    """What a finished run lacks (empty when complete): samples without a clean pass, attacks not done."""
    missing = []
    if summary["n_samples"] < len(loaded.indices):
        missing.append(f"clean pass on {summary['n_samples']} of {len(loaded.indices)} samples")
    rows = {a["name"]: a for a in summary["attacks"]}
    for name in loaded.names(config):
        row = rows.get(name)
        if row is None or not row["complete"]:
            missing.append(name)
    return missing


def _finish(run_dir: Path, config: RunConfig, loaded: Loaded, run_name: str) -> dict[str, Any]:
    """Sanity checks and summary from the (merged) store; summary.json written atomically."""
    store = Store(run_dir / STORE_FILE)
    try:
        log.info(
            "run %s: sanity checks (randomness, gradients, unbounded eps, batch dependence, ...)", run_name
        )
        started = time.perf_counter()
        _sanity(store, loaded, config)
        statuses = [f["status"] for f in store.findings()]
        log.info("run %s: sanity checks done in %.1f s: %s", run_name, time.perf_counter() - started,
                 ", ".join(f"{statuses.count(s)} {s}" for s in ("pass", "warn", "fail") if s in statuses))  # fmt: skip
        store.set_meta("finished_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        elapsed = store.meta("elapsed", 0.0)
        summary = summarize(store, loaded.classes)
        summary.update(
            run=run_name,
            model=loaded.model_name,
            data=loaded.data_name,
            suite=config.suite.name,
            seed=config.seed,
            device=str(loaded.device),
            seconds=elapsed,
            findings=store.findings(),
            skipped_files=list(getattr(loaded.dataset, "skipped", [])),
            oom_backoffs=store.meta("oom_backoffs") or [],
            normalization=loaded.model_info.get("normalization"),
            **({"input": loaded.input} if loaded.input else {}),
        )
        if loaded.adaptive:
            summary["defense"] = loaded.adapted.record
    finally:
        store.close()
    missing = _missing(summary, config, loaded)
    summary["complete"] = not missing
    if missing:
        log.warning("run %s ended INCOMPLETE (%s): its figures cover only what was evaluated. Run the same "
                    "command again to finish it.", run_name, "; ".join(missing))  # fmt: skip
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _cascades(store: Store) -> list[list[dict[str, Any]]]:
    """Every batch's ensemble cascade (AutoAttack's ``cascade`` artifact), for the black-box check."""
    return [
        cascade for attack in store.attacks() for cascade in store.json_artifacts(attack["id"], "cascade")
    ]


def _sanity(store: Store, loaded: Loaded, config: RunConfig) -> None:
    """Runner-level findings, plus the sanity-check module's."""
    from . import sanity

    summary = summarize(store)
    bad = [a["name"] for a in summary["attacks"] if a["claimed_not_confirmed"]]
    findings = [
        (
            "claimed-success-recheck",
            "warn" if bad else "pass",
            f"attacks whose claimed successes failed the fp32 recheck: {', '.join(bad)}"
            if bad
            else "every claimed success was confirmed by an independent fp32 forward pass",
            "An attack reported success that an independent fp32 pass of the deployed model (in its own mode and "
            "batch composition; for a stochastic model, every fresh draw) does not confirm: the model may be "
            "stochastic, batch-dependent or numerically unstable (bf16?). Those samples count as robust.",
        )
    ]
    chance = chance_finding(summary["clean_accuracy"], len(loaded.classes), summary["n_samples"],
                            loaded.model_info.get("normalization"))  # fmt: skip
    if chance is not None:
        log.warning("%s: %s. %s", loaded.model_name, chance[2], chance[3])
        findings.append(chance)
    x, y = get_batch(loaded.dataset, loaded.indices[: min(len(loaded.indices), 64)])
    context = {"summary": summary, "device": loaded.device, "cascade": _cascades(store),
               "adaptations": loaded.adapted.record}  # fmt: skip
    if loaded.adapted.eot_samples > 1 and any(e.attack is not loaded.adapted.adapt_attack(e.attack)
                                              for e in config.suite.entries):  # fmt: skip
        context["eot_samples"] = loaded.adapted.eot_samples
    for f in sanity.run_sanity_checks(loaded.net, x.to(loaded.device), y.to(loaded.device), context=context):
        findings.append((f.name, f.status, f.evidence, f.advice))
    store.write_findings(findings)
