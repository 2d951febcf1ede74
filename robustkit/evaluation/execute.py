"""The batch loop: clean pass and attacks over a fixed batch composition, committed batch by batch.

Batches are fixed chunks of the evaluated indices (``batch_size`` consecutive samples), so a
resumed, sharded or single-process run with the same batch size sees exactly the same batch
compositions; each sample's randomness comes from its own generator seeded by (seed, attack, index).
Resume goes by sample: a batch runs on those of its samples not yet committed, so a run resumed with
another batch size still covers every sample once. Within a batch only the clean-correct samples are
attacked. A CUDA out-of-memory error halves the batch and continues; the halves' artifacts are stored
as numbered parts of the batch.

Every suite entry runs in every view of the adapted defense (``robustkit.defenses.adaptive``), each
view its own attack row (``view_name``): ``white-box`` (the only view of a batch-independent model: the
behaviour above), ``whole-batch`` (a batch-dependent model: every sample of the deployed batch attacked
together, the clean-misclassified ones carried along unmodified, a partly done batch redone whole),
``one-at-a-time`` (batches of one), ``among-clean`` (each sample alone among its clean batch mates) and
``transfer:<source>`` (the source's gradients, success judged on the defense). Every verdict is taken
on the deployed model in the mode it was given (``AsDeployed``: never ``.eval()``) and in the view's
batch composition; a stochastic model's verdict is the fraction of ``draws`` fresh forward passes that
classify the sample correctly (stored as the per-sample metric ``draw_accuracy``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks.criteria import Confirmation, Misclassification, confirm, fp32_logits
from ..attacks.universal import is_universal
from ..defenses.adaptive import AMONG_CLEAN, ONE_AT_A_TIME, WHOLE_BATCH, AmongClean, View
from ..errors import InputError, ModelError
from ..functional.placement import ObjectGeometry
from ..functional.random import sample_generators
from ..models.checks import probe
from ..models.fastpath import Precisions
from ..models.state import preserved
from ..validate import check_inputs, check_labels, check_logits
from .store import ArtifactRecord, BatchRecord, Outcome, SampleRecord, Store, pack_tensors
from .suite import Suite, SuiteEntry

log = logging.getLogger(__name__)

WHITE_BOX = View("white-box")
DRAW_ACCURACY = "draw_accuracy"  # per-sample metric: fraction of fresh draws classifying x_adv correctly


def view_name(entry: str, view: View) -> str:
    """The store name of a suite entry in a view: the entry's own name in the single white-box view."""
    return entry if view.name == WHITE_BOX.name else f"{entry} [{view.name}]"


class AsDeployed:
    """The deployed model for verdicts: a plain callable (not a module), so the fp32 recheck runs it in
    the mode it was given (never ``.eval()``), its state (BatchNorm running statistics) restored after."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with preserved(self.model):
            return self.model(x)


def get_batch(ds: Any, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "x") and hasattr(ds, "y"):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.x[idx], ds.y[idx]
    items = [ds[i] for i in indices]
    return torch.stack([t[0] for t in items]), torch.as_tensor([int(t[1]) for t in items], dtype=torch.long)


def get_objects(ds: Any, indices: list[int]) -> ObjectGeometry | None:
    """Where the object lies in each sample of ``indices`` when the dataset knows (its ``objects``)."""
    objects = getattr(ds, "objects", None)
    return objects.select(indices) if isinstance(objects, ObjectGeometry) else None


def chunks(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]


def preflight(
    net,
    dataset,
    indices: list[int],
    num_classes: int | None,
    device: torch.device,
    n: int = 8,
    name: str = "under evaluation",
) -> None:
    """Check data and model (``name``: how errors name it) on a few samples before anything is written."""
    chunk = indices[:n]
    x, y = get_batch(dataset, chunk)
    check_inputs(x, f"data samples {chunk[0]}..{chunk[-1]}")
    check_labels(y, len(chunk), f"labels of samples {chunk[0]}..{chunk[-1]}", num_classes)
    with preserved(net):  # a model in train mode keeps its BatchNorm statistics
        logits = probe(net, x.to(device), name)
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
    # the adapted defense (``robustkit.defenses.adaptive.adapt``): its views, the model gradient attacks
    # differentiate when it is not ``net`` (BPDA surrogate), batch dependence and the verdict's draws
    views: tuple[View, ...] = (WHITE_BOX,)
    attack_model: Any = None
    batch_dependent: bool = False
    draws: int = 1
    keep_adversarial: bool = False  # every attacked sample's exact x_adv stored too (``adversarial.py``)

    @property
    def num_classes(self) -> int | None:
        return len(getattr(self.dataset, "classes", [])) or None

    @property
    def judge(self) -> AsDeployed:
        """The deployed model, for every verdict."""
        return AsDeployed(self.net.reference)

    def whole(self, view: View) -> bool:
        """Whether ``view`` attacks the deployed batches whole (a batch-dependent model)."""
        return self.batch_dependent and view.batch == WHOLE_BATCH

    def target(self, view: View, mates: torch.Tensor | None = None) -> Target:
        """What the attacks of ``view`` differentiate and what judges them (``mates``: the clean batch
        mates of an among-clean sample)."""
        model = self.net.reference
        attack_model = view.model(self.attack_model if self.attack_model is not None else model)
        if mates is not None:
            model, attack_model = AmongClean(model, mates), AmongClean(attack_model, mates)
        whole = self.whole(view)
        if attack_model is self.net.reference and not whole:
            return Target(self.net, self.judge)  # the plain white-box view: the fast path as configured
        # whole batches for a batch-dependent model; behind a surrogate (BPDA head skipped) the attacks decide
        # success on the deployed model
        precisions = Precisions(fast=attack_model, fp32=attack_model, reference=model, batch_dependent=whole,
                                surrogate=self.attack_model is not None)  # fmt: skip
        return Target(precisions, AsDeployed(model))


@dataclass(frozen=True)
class Target:
    """One attack call's models: ``precisions`` (``fast``: what the attack differentiates) and ``judge``
    (the deployed model in the view's batch composition, for the verdict)."""

    precisions: Precisions
    judge: Callable


@dataclass(frozen=True)
class Stage:
    """One suite entry being run in one view: its id in the store, its position ``k`` in the suite (the
    salt of the per-sample generators), the attack to call (the entry's adapted to the defense, or the
    fitted universal attack) and the view."""

    aid: int
    k: int
    entry: SuiteEntry
    attack: Any
    view: View = WHITE_BOX

    @property
    def name(self) -> str:
        return view_name(self.entry.name, self.view)


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
            _clean_batch(job, chunk if job.batch_dependent else rest)  # the deployed batch, whole
        job.bar.update(len(chunk))


def _clean_batch(job: Job, chunk: list[int]) -> None:
    x, y = get_batch(job.dataset, chunk)
    check_inputs(x, f"data samples {chunk[0]}..{chunk[-1]}")
    check_labels(y, len(chunk), f"labels of samples {chunk[0]}..{chunk[-1]}", job.num_classes)
    t0 = time.perf_counter()
    x, yd = x.to(job.device), y.to(job.device)
    with _draws(job, chunk[0]):
        logits = fp32_logits(job.judge, x)
        check_logits(logits, len(chunk), job.num_classes)
        right = [logits.argmax(1) == yd] + [
            fp32_logits(job.judge, x).argmax(1) == yd for _ in range(job.draws - 1)
        ]
    pred, conf = logits.argmax(1).tolist(), logits.softmax(1).max(1).values.tolist()
    if job.draws > 1:  # correct: in some draw (attacked); accuracy: the fraction of draws
        acc = torch.stack(right).float().mean(0).tolist()
        samples = [SampleRecord(i, label, p, a > 0, c, a)
                   for i, label, p, c, a in zip(chunk, y.tolist(), pred, conf, acc, strict=True)]  # fmt: skip
    else:
        samples = [
            SampleRecord(i, label, p, p == label, c)
            for i, label, p, c in zip(chunk, y.tolist(), pred, conf, strict=True)
        ]
    job.store.write_clean(
        samples, BatchRecord("clean", chunk[0], len(chunk), time.perf_counter() - t0, {}, chunk)
    )


@contextlib.contextmanager
def _draws(job: Job, *key: int) -> Any:
    """A stochastic model's own randomness (the attack's draws, the verdict's fresh draws) seeded by the
    run's seed and ``key`` inside a forked RNG, so that a run is reproducible and the caller's global RNG
    state is restored afterwards; nothing for a deterministic model."""
    if job.draws <= 1:
        yield
        return
    with torch.random.fork_rng(devices=[job.device] if job.device.type == "cuda" else []):
        torch.manual_seed(hash((job.seed, *key)) & 0x7FFF_FFFF)
        yield


def attack_pass(job: Job, stage: Stage, batches: list[list[int]]) -> None:
    """The stage over every batch: the samples of each batch not yet done, committed in one transaction
    (a whole-batch view of a batch-dependent model redoes a partly done batch whole)."""
    done = job.store.attacked(stage.aid)
    samples = {s.idx: s for s in job.store.samples()}
    for chunk in batches:
        rest = [i for i in chunk if i not in done]
        if rest:
            rest = chunk if job.whole(stage.view) else rest
            out = _view_batch(job, stage, chunk, rest, samples)
            batch = BatchRecord(stage.name, rest[0], len(rest), out.seconds, out.counters, rest)
            artifacts = [
                ArtifactRecord(rest[0], key, part, kind, data)
                for part, arts in enumerate(out.parts)
                for key, (kind, data) in arts.items()
            ]
            job.store.write_outcomes(stage.aid, out.outcomes, batch, artifacts, out.examples)
        job.bar.update(len(chunk))


def _view_batch(job: Job, stage: Stage, chunk: list[int], rest: list[int], samples: dict) -> Attacked:
    """``rest`` of the deployed batch ``chunk`` attacked in the stage's view."""
    view = stage.view
    if job.whole(view):  # every sample attacked together; the misclassified carried along unmodified
        carry = [not samples[i].correct for i in rest]
        return _attack(job, stage, rest, job.target(view), carry)
    wrong = [
        Outcome(i, False, False, False, samples[i].pred, samples[i].confidence)
        for i in rest
        if not samples[i].correct
    ]
    todo = [i for i in rest if samples[i].correct]
    out = Attacked(wrong, 0.0, {})
    if view.batch == ONE_AT_A_TIME:
        parts = [attack_samples(job, stage, [i], i, job.target(view)) for i in todo]
    elif view.batch == AMONG_CLEAN:
        x = get_batch(job.dataset, chunk)[0].to(job.device)
        where = {i: p for p, i in enumerate(chunk)}
        parts = [
            attack_samples(
                job, stage, [i], i, job.target(view, torch.cat([x[: where[i]], x[where[i] + 1 :]]))
            )
            for i in todo
        ]
    else:
        parts = [attack_samples(job, stage, todo, rest[0], job.target(view))] if todo else []
    for part in parts:
        out = out + part
    return out


def attack_samples(job: Job, stage: Stage, todo: list[int], key: int, target: Target) -> Attacked:
    """Run the attack on ``todo``; on CUDA out-of-memory halve the batch (recorded) and merge the halves."""
    try:
        return _attack(job, stage, todo, target)
    except torch.cuda.OutOfMemoryError:
        if len(todo) == 1:
            raise
    if job.device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(todo) // 2
    name = stage.name
    log.warning("%s: CUDA out of memory on %d samples; continuing with %d and %d", name, len(todo), half,
                len(todo) - half)  # fmt: skip
    backoffs = job.store.meta("oom_backoffs") or []
    job.store.set_meta(
        "oom_backoffs", [*backoffs, {"attack": name, "batch": key, "from": len(todo), "to": half}]
    )
    return attack_samples(job, stage, todo[:half], key, target) + attack_samples(
        job, stage, todo[half:], key, target
    )


def _attack(
    job: Job, stage: Stage, todo: list[int], target: Target, carry: list[bool] | None = None
) -> Attacked:
    """The attack on ``todo`` as one batch, judged by ``target.judge``; ``carry``: samples misclassified
    when clean, in the batch but left unmodified and counted as not robust."""
    entry, device = stage.entry, job.device
    x, y = get_batch(job.dataset, todo)
    x, y = x.to(device), y.to(device)
    gens = sample_generators(job.seed, todo, salt=stage.k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    net = target.precisions
    criterion = Misclassification(margin=net.tolerance)  # net: the model's Precisions (fast path)
    objects = get_objects(job.dataset, todo)
    placed = {} if objects is None else {"objects": objects}  # only attacks of datasets that know
    with _draws(job, todo[0], stage.k + 1):
        result = stage.attack(net.fast, x, y, criterion=criterion, precisions=net, generator=gens, **placed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    x_adv = result.x_adv.detach()
    if x_adv.shape != x.shape:
        raise InputError(
            f"attack {entry.name} returned x_adv of shape {tuple(x_adv.shape)} for input {tuple(x.shape)}"
        )
    carried = torch.tensor(carry or [False] * len(todo), device=device)
    if carry is not None:
        x_adv = torch.where(carried.view(-1, *[1] * (x.dim() - 1)), x, x_adv)
    check, accuracy = verdict(job, target.judge, getattr(entry.attack, "threat", None), x, x_adv, y, todo[0])
    diff = (x_adv - x).flatten(1).float()
    # each per-sample column copied to the host once (one sync each), not element by element
    pred = check.logits.argmax(1).tolist()
    conf = check.logits.softmax(1).max(1).values.tolist()
    robust = (~check.confirmed if accuracy is None else accuracy == 1) & ~carried
    robust, within, attacked = robust.tolist(), check.within.tolist(), (~carried).tolist()
    linf, l2 = diff.abs().amax(1).tolist(), diff.norm(dim=1).tolist()
    claimed = (result.success.bool() & ~carried).tolist()
    metrics = {
        key: v.reshape(-1).tolist()
        for key, v in per_sample_metrics(result.metrics, len(todo)).items()
        if v[0].numel() == 1
    }
    if accuracy is not None:
        metrics[DRAW_ACCURACY] = torch.where(carried, 0.0, accuracy).tolist()
    outcomes = []
    for j, i in enumerate(todo):
        m = {key: v[j] for key, v in metrics.items()}
        if not within[j]:
            m["norm_violation"] = 1.0
        outcomes.append(Outcome(i, attacked[j], claimed[j], robust[j], pred[j], conf[j], linf[j], l2[j], m))
    kept = job.keep_adversarial
    examples = {
        i: pack_tensors({"clean": _u8(x[j]), "adv": _u8(x_adv[j])} | ({"x_adv": x_adv[j]} if kept else {}))
        for j, i in enumerate(todo)
        if attacked[j] and (kept or i < job.gallery)
    }
    return Attacked(outcomes, seconds, dict(result.counters), [_artifacts(entry, result.artifacts)], examples)


def verdict(
    job: Job, judge: Callable, threat: Any, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, key: int
) -> tuple[Confirmation, torch.Tensor | None]:
    """``confirm`` on the deployed model; for a stochastic one (``job.draws`` > 1) also the per-sample
    fraction of fresh draws that classify ``x_adv`` correctly (a sample outside the bound counts as
    classified correctly, as ``confirm`` does)."""
    with _draws(job, key):
        check = confirm(judge, threat, x, x_adv, y)
        if job.draws <= 1:
            return check, None
        fooled = [check.adversarial] + [
            Misclassification()(fp32_logits(judge, x_adv), y) for _ in range(job.draws - 1)
        ]
    return check, (~torch.stack(fooled) | ~check.within).float().mean(0)


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
    job: Job,
    batches: list[list[int]],
    suite: Suite,
    fit: Callable[[SuiteEntry, int], Any],
    adapt: Callable[[Any], Any] | None = None,
) -> None:
    """Every attack of the suite in every view of ``job`` over ``batches``; ``fit(entry, k)`` prepares
    universal attacks (once per entry), ``adapt(attack)`` adapts each attack to the defense (EOT)."""
    job.bar.set_description("clean")
    clean_pass(job, batches)
    resolved = suite.resolved()["attacks"]
    for k, entry in enumerate(suite.entries):
        attack = adapt(entry.attack) if adapt is not None else entry.attack
        fitted = None
        kind = getattr(entry.attack, "input_kind", "image")
        for view in job.views:
            name = view_name(entry.name, view)
            job.bar.set_description(name)
            params = view_params(resolved[k], entry.attack, attack, view)
            aid = job.store.attack_id(name, entry.attack_key, params, entry.eps, entry.norm, kind)
            done = job.store.attacked(aid)
            todo = any(i not in done for c in batches for i in c)
            if fitted is None and is_universal(attack) and todo:
                fitted = _fit(job, name, fit, entry, k)
            attack_pass(job, Stage(aid, k, entry, fitted or attack, view), batches)


TRAINING = -1  # the first_idx of the BatchRecord that holds a universal attack's training cost


def _fit(job: Job, stage: str, fit: Callable[[SuiteEntry, int], Any], entry: SuiteEntry, k: int) -> Any:
    """Fit a universal attack and record what its training cost as a batch of no samples of ``stage``
    (``first_idx`` ``TRAINING``): its seconds and counters then count in the attack's row and in the
    report's timing section. The cost is the attack's own ``training_cost`` when it keeps one (steps,
    passes, time), else the wall-clock time of ``fit``."""
    if job.device.type == "cuda":
        torch.cuda.synchronize(job.device)
    t0 = time.perf_counter()
    fitted = fit(entry, k)
    if job.device.type == "cuda":
        torch.cuda.synchronize(job.device)
    seconds = time.perf_counter() - t0
    cost = getattr(fitted, "training_cost", None)
    counters = cost.counters() if cost is not None else {}
    job.store.write_outcomes(0, [], BatchRecord(stage, TRAINING, 0, seconds, counters, []))
    return fitted


def view_params(params: dict[str, Any], entry: Any, attack: Any, view: View) -> dict[str, Any]:
    """The stored parameters of an entry in a view: the resolved ones, the fields the defense's
    adaptation changed (``eot_samples``, ``version``) and, outside the white-box view, ``view``."""
    out = dict(params)
    if attack is not entry and dataclasses.is_dataclass(attack):
        for f in dataclasses.fields(attack):
            value = getattr(attack, f.name)
            if (
                f.init
                and isinstance(value, int | float | str | bool)
                and value != getattr(entry, f.name, None)
            ):
                out[f.name] = value
    if view.name != WHITE_BOX.name:
        out["view"] = view.name
    return out
