"""The batch loop: clean pass and attacks over a fixed batch composition, committed batch by batch.

Batches are fixed chunks of the evaluated indices (``batch_size`` consecutive samples), so a
resumed, sharded or single-process run with the same batch size sees exactly the same batch
compositions; each sample's randomness comes from its own generator seeded by (seed, attack, index).
Resume goes by sample: a batch runs on those of its samples not yet committed, so a run resumed with
another batch size still covers every sample once. Within a batch only the clean-correct samples are
attacked. A CUDA out-of-memory error halves the batch and continues; the halves' artifacts are stored
as numbered parts of the batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks.criteria import Misclassification, confirm, fp32_logits
from ..errors import InputError, ModelError
from ..functional.random import sample_generators
from ..models.fastpath import Precisions
from ..validate import check_inputs, check_labels, check_logits
from .store import ArtifactRecord, BatchRecord, Outcome, SampleRecord, Store, pack_tensors
from .suite import Suite, SuiteEntry

log = logging.getLogger(__name__)


def get_batch(ds: Any, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "x") and hasattr(ds, "y"):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.x[idx], ds.y[idx]
    items = [ds[i] for i in indices]
    return torch.stack([t[0] for t in items]), torch.as_tensor([int(t[1]) for t in items], dtype=torch.long)


def chunks(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]


def preflight(
    net, dataset, indices: list[int], num_classes: int | None, device: torch.device, n: int = 8
) -> None:
    """Check data and model on a few samples before anything is written."""
    chunk = indices[:n]
    x, y = get_batch(dataset, chunk)
    check_inputs(x, f"data samples {chunk[0]}..{chunk[-1]}")
    check_labels(y, len(chunk), f"labels of samples {chunk[0]}..{chunk[-1]}", num_classes)
    with torch.no_grad():
        logits = net(x.to(device))
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"the model must return a logits tensor (B, K), got {type(logits).__name__}")
    check_logits(logits.float(), len(chunk), num_classes)
    rows = logits.float()
    if (
        len(chunk) > 1
        and (rows >= 0).all()
        and torch.allclose(rows.sum(1), torch.ones(len(chunk)), atol=1e-4)
    ):
        raise ModelError(
            "the model returns probabilities (every row is non-negative and sums to 1); attacks need logits. "
            "Remove the final softmax from the model."
        )


@dataclass(frozen=True)
class Job:
    """What every batch of a run shares: the store, the model attacks see, the data and the settings."""

    store: Store
    net: Precisions
    dataset: Any
    device: torch.device
    seed: int
    gallery: int
    bar: Any
    keep_adversarial: bool = False  # every attacked sample's exact x_adv stored too (``adversarial.py``)

    @property
    def num_classes(self) -> int | None:
        return len(getattr(self.dataset, "classes", [])) or None


@dataclass(frozen=True)
class Stage:
    """One suite entry being run: its id in the store, its position ``k`` in the suite (the salt of the
    per-sample generators) and the attack to call (the entry's, or the fitted universal attack)."""

    aid: int
    k: int
    entry: SuiteEntry
    attack: Any


@dataclass
class Attacked:
    """What attacking some samples produced; ``parts``: the artifacts of each piece the batch ran as."""

    outcomes: list[Outcome]
    seconds: float
    counters: dict[str, int]
    parts: list[dict[str, tuple[str, bytes]]] = field(default_factory=list)
    examples: dict[int, bytes] = field(default_factory=dict)

    def __add__(self, other: Attacked) -> Attacked:
        keys = {*self.counters, *other.counters}
        return Attacked(
            outcomes=self.outcomes + other.outcomes,
            seconds=self.seconds + other.seconds,
            counters={c: self.counters.get(c, 0) + other.counters.get(c, 0) for c in keys},
            parts=self.parts + other.parts,
            examples={**self.examples, **other.examples},
        )


def clean_pass(job: Job, batches: list[list[int]]) -> None:
    done = job.store.clean_done()
    for chunk in batches:
        rest = [i for i in chunk if i not in done]
        if rest:
            _clean_batch(job, rest)
        job.bar.update(len(chunk))


def _clean_batch(job: Job, chunk: list[int]) -> None:
    x, y = get_batch(job.dataset, chunk)
    check_inputs(x, f"data samples {chunk[0]}..{chunk[-1]}")
    check_labels(y, len(chunk), f"labels of samples {chunk[0]}..{chunk[-1]}", job.num_classes)
    t0 = time.perf_counter()
    logits = fp32_logits(job.net.reference, x.to(job.device))
    check_logits(logits, len(chunk), job.num_classes)
    pred, conf = logits.argmax(1).tolist(), logits.softmax(1).max(1).values.tolist()
    samples = [
        SampleRecord(i, label, p, p == label, c)
        for i, label, p, c in zip(chunk, y.tolist(), pred, conf, strict=True)
    ]
    job.store.write_clean(
        samples, BatchRecord("clean", chunk[0], len(chunk), time.perf_counter() - t0, {}, chunk)
    )


def attack_pass(job: Job, stage: Stage, batches: list[list[int]]) -> None:
    """The stage over every batch: the samples of each batch not yet done, committed in one transaction."""
    done = job.store.attacked(stage.aid)
    samples = {s.idx: s for s in job.store.samples()}
    for chunk in batches:
        rest = [i for i in chunk if i not in done]
        if rest:
            wrong = [
                Outcome(i, False, False, False, samples[i].pred, samples[i].confidence)
                for i in rest
                if not samples[i].correct
            ]
            todo = [i for i in rest if samples[i].correct]
            out = attack_samples(job, stage, todo, rest[0]) if todo else Attacked([], 0.0, {})
            batch = BatchRecord(stage.entry.name, rest[0], len(rest), out.seconds, out.counters, rest)
            artifacts = [
                ArtifactRecord(rest[0], key, part, kind, data)
                for part, arts in enumerate(out.parts)
                for key, (kind, data) in arts.items()
            ]
            job.store.write_outcomes(stage.aid, wrong + out.outcomes, batch, artifacts, out.examples)
        job.bar.update(len(chunk))


def attack_samples(job: Job, stage: Stage, todo: list[int], key: int) -> Attacked:
    """Run the attack on ``todo``; on CUDA out-of-memory halve the batch (recorded) and merge the halves."""
    try:
        return _attack(job, stage, todo)
    except torch.cuda.OutOfMemoryError:
        if len(todo) == 1:
            raise
    if job.device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(todo) // 2
    name = stage.entry.name
    log.warning("%s: CUDA out of memory on %d samples; continuing with %d and %d", name, len(todo), half,
                len(todo) - half)  # fmt: skip
    backoffs = job.store.meta("oom_backoffs") or []
    job.store.set_meta(
        "oom_backoffs", [*backoffs, {"attack": name, "batch": key, "from": len(todo), "to": half}]
    )
    return attack_samples(job, stage, todo[:half], key) + attack_samples(job, stage, todo[half:], key)


def _attack(job: Job, stage: Stage, todo: list[int]) -> Attacked:
    entry, device = stage.entry, job.device
    x, y = get_batch(job.dataset, todo)
    x, y = x.to(device), y.to(device)
    gens = sample_generators(job.seed, todo, salt=stage.k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    criterion = Misclassification(margin=job.net.tolerance)  # job.net: the model's Precisions (fast path)
    result = stage.attack(job.net.fast, x, y, criterion=criterion, precisions=job.net, generator=gens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    x_adv = result.x_adv.detach()
    if x_adv.shape != x.shape:
        raise InputError(
            f"attack {entry.name} returned x_adv of shape {tuple(x_adv.shape)} for input {tuple(x.shape)}"
        )
    check = confirm(job.net.reference, getattr(entry.attack, "threat", None), x, x_adv, y)
    diff = (x_adv - x).flatten(1).float()
    # each per-sample column copied to the host once (one sync each), not element by element
    pred = check.logits.argmax(1).tolist()
    conf = check.logits.softmax(1).max(1).values.tolist()
    robust, within = (~check.confirmed).tolist(), check.within.tolist()
    linf, l2 = diff.abs().amax(1).tolist(), diff.norm(dim=1).tolist()
    claimed = result.success.bool().tolist()
    metrics = {
        key: v.reshape(-1).tolist()
        for key, v in per_sample_metrics(result.metrics, len(todo)).items()
        if v[0].numel() == 1
    }
    outcomes = []
    for j, i in enumerate(todo):
        m = {key: v[j] for key, v in metrics.items()}
        if not within[j]:
            m["norm_violation"] = 1.0
        outcomes.append(Outcome(i, True, claimed[j], robust[j], pred[j], conf[j], linf[j], l2[j], m))
    kept = job.keep_adversarial
    examples = {
        i: pack_tensors({"clean": _u8(x[j]), "adv": _u8(x_adv[j])} | ({"x_adv": x_adv[j]} if kept else {}))
        for j, i in enumerate(todo)
        if kept or i < job.gallery
    }
    return Attacked(outcomes, seconds, dict(result.counters), [_artifacts(entry, result.artifacts)], examples)


def per_sample_metrics(metrics: dict[str, Any], n: int) -> dict[str, torch.Tensor]:
    """Every per-sample tensor (first dimension ``n``) of ``AttackResult.metrics``, on the CPU: each is
    stored by name in ``Outcome.metrics`` and shown in the report without further registration."""
    return {
        key: v.detach().float().cpu()
        for key, v in metrics.items()
        if isinstance(v, torch.Tensor) and v.shape[:1] == (n,)
    }


def _artifacts(entry: SuiteEntry, artifacts: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    out = {}
    for key, value in artifacts.items():
        if isinstance(value, torch.Tensor):
            out[key] = ("tensor", pack_tensors({key: value}))
        else:
            try:
                out[key] = ("json", json.dumps(value, default=_tensor_json).encode())
            except (TypeError, ValueError):
                log.debug("artifact %s of %s is not storable; skipped", key, entry.name)
    return out


def _u8(t: torch.Tensor) -> torch.Tensor:
    return (t.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _tensor_json(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    raise TypeError(type(v).__name__)


def run_suite(
    job: Job, batches: list[list[int]], suite: Suite, fit: Callable[[SuiteEntry, int], Any]
) -> None:
    """Every attack of the suite over ``batches``; ``fit(entry, k)`` prepares universal attacks."""
    job.bar.set_description("clean")
    clean_pass(job, batches)
    resolved = suite.resolved()["attacks"]
    for k, entry in enumerate(suite.entries):
        job.bar.set_description(entry.name)
        kind = getattr(entry.attack, "input_kind", "image")
        aid = job.store.attack_id(entry.name, entry.attack_key, resolved[k], entry.eps, entry.norm, kind)
        done = job.store.attacked(aid)
        attack = entry.attack
        if callable(getattr(attack, "fit", None)) and any(i not in done for c in batches for i in c):
            attack = fit(entry, k)
        attack_pass(job, Stage(aid, k, entry, attack), batches)
