"""The batch loop: clean pass and attacks over a fixed batch composition, committed batch by batch.

Batches are fixed chunks of the evaluated indices (``batch_size`` consecutive samples), so a
resumed, sharded or single-process run sees exactly the same batch compositions; each sample's
randomness comes from its own generator seeded by (seed, attack, index). Within a batch only the
clean-correct samples are attacked. A CUDA out-of-memory error halves the batch and continues.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch

from ..attacks.criteria import Misclassification, confirm, fp32_logits
from ..errors import InputError, ModelError
from ..functional.random import sample_generators
from ..validate import check_inputs, check_labels, check_logits
from .store import Store, pack_tensors
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


def clean_pass(store: Store, net, dataset, batches: list[list[int]], device, num_classes, bar) -> None:
    done = store.clean_done()
    for chunk in batches:
        if chunk[0] in done:
            bar.update(len(chunk))
            continue
        x, y = get_batch(dataset, chunk)
        check_inputs(x, f"data samples {chunk[0]}..{chunk[-1]}")
        check_labels(y, len(chunk), f"labels of samples {chunk[0]}..{chunk[-1]}", num_classes)
        t0 = time.perf_counter()
        logits = fp32_logits(net.reference, x.to(device))
        check_logits(logits, len(chunk), num_classes)
        pred = logits.argmax(1).cpu()
        conf = logits.softmax(1).max(1).values.cpu()
        rows = [
            (i, int(y[j]), int(pred[j]), bool(pred[j] == y[j]), float(conf[j])) for j, i in enumerate(chunk)
        ]
        store.write_clean(
            rows, ("clean", chunk[0], len(chunk), time.perf_counter() - t0, "{}", json.dumps(chunk))
        )
        bar.update(len(chunk))


def attack_pass(
    store: Store,
    aid: int,
    k: int,
    entry: SuiteEntry,
    attack,
    net,
    dataset,
    batches,
    device,
    seed,
    gallery,
    bar,
) -> None:
    done = store.attacked(aid)
    samples = {i: (y, p, c, f) for i, y, p, c, f in store.samples()}
    for chunk in batches:
        if chunk[0] in done:
            bar.update(len(chunk))
            continue
        wrong = [i for i in chunk if not samples[i][2]]
        rows = [(i, 0, 0, 0, samples[i][1], samples[i][3], None, None, None) for i in wrong]
        todo = [i for i in chunk if samples[i][2]]
        if not todo:
            store.write_outcomes(
                aid, rows, (entry.name, chunk[0], len(chunk), 0.0, "{}", json.dumps(chunk)), {}, {}
            )
        else:
            run_chunk(store, aid, k, entry, attack, net, dataset, chunk, todo, rows, device, seed, gallery)
        bar.update(len(chunk))


def run_chunk(store, aid, k, entry, attack, net, dataset, chunk, todo, rows, device, seed, gallery) -> None:
    """Attack ``todo`` (the clean-correct part of ``chunk``) and commit the whole chunk in one transaction."""
    out = attack_samples(entry, attack, net, dataset, todo, device, seed, k, gallery, store, chunk[0])
    batch_row = (
        entry.name,
        chunk[0],
        len(chunk),
        out["seconds"],
        json.dumps(out["counters"]),
        json.dumps(chunk),
    )
    store.write_outcomes(aid, rows + out["rows"], batch_row, out["artifacts"], out["examples"])


def attack_samples(entry, attack, net, dataset, todo, device, seed, k, gallery, store, key) -> dict[str, Any]:
    """Run the attack on ``todo``; on CUDA out-of-memory halve the batch (recorded) and merge the halves."""
    try:
        return _attack(entry, attack, net, dataset, todo, device, seed, k, gallery)
    except torch.cuda.OutOfMemoryError:
        if len(todo) == 1:
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(todo) // 2
    log.warning(
        "%s: CUDA out of memory on %d samples; continuing with %d and %d",
        entry.name,
        len(todo),
        half,
        len(todo) - half,
    )
    backoffs = store.meta("oom_backoffs") or []
    store.set_meta(
        "oom_backoffs", [*backoffs, {"attack": entry.name, "batch": key, "from": len(todo), "to": half}]
    )
    a = attack_samples(entry, attack, net, dataset, todo[:half], device, seed, k, gallery, store, key)
    b = attack_samples(entry, attack, net, dataset, todo[half:], device, seed, k, gallery, store, key)
    counters = {
        c: a["counters"].get(c, 0) + b["counters"].get(c, 0) for c in {*a["counters"], *b["counters"]}
    }
    artifacts = {**a["artifacts"], **{f"{n}#2": v for n, v in b["artifacts"].items()}}
    return {
        "rows": a["rows"] + b["rows"],
        "seconds": a["seconds"] + b["seconds"],
        "counters": counters,
        "artifacts": artifacts,
        "examples": {**a["examples"], **b["examples"]},
    }


def _attack(entry, attack, net, dataset, todo, device, seed, k, gallery) -> dict[str, Any]:
    x, y = get_batch(dataset, todo)
    x, y = x.to(device), y.to(device)
    gens = sample_generators(seed, todo, salt=k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    criterion = Misclassification(margin=net.tolerance)  # net: the model's Precisions (the fast path)
    result = attack(net.fast, x, y, criterion=criterion, precisions=net, generator=gens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    x_adv = result.x_adv.detach()
    if x_adv.shape != x.shape:
        raise InputError(
            f"attack {entry.name} returned x_adv of shape {tuple(x_adv.shape)} for input {tuple(x.shape)}"
        )
    logits, _, within = check = confirm(net.reference, getattr(entry.attack, "threat", None), x, x_adv, y)
    pred = logits.argmax(1)
    conf = logits.softmax(1).max(1).values
    robust = ~check.confirmed
    diff = (x_adv - x).flatten(1).float()
    linf, l2 = diff.abs().amax(1), diff.norm(dim=1)
    metrics = {
        key: v.detach().float().cpu()
        for key, v in result.metrics.items()
        if isinstance(v, torch.Tensor) and v.shape[:1] == (len(todo),)
    }
    claimed = result.success.bool().cpu()
    rows = []
    for j, i in enumerate(todo):
        m = {key: float(v[j]) for key, v in metrics.items() if v[j].numel() == 1}
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
    examples = {
        i: pack_tensors({"clean": _u8(x[j]), "adv": _u8(x_adv[j])}) for j, i in enumerate(todo) if i < gallery
    }
    return {
        "rows": rows,
        "seconds": seconds,
        "counters": dict(result.counters),
        "artifacts": artifacts,
        "examples": examples,
    }


def _u8(t: torch.Tensor) -> torch.Tensor:
    return (t.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _tensor_json(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    raise TypeError(type(v).__name__)


def run_suite(store: Store, net, dataset, batches, suite: Suite, device, seed, gallery, bar, fit) -> None:
    """Every attack of the suite over ``batches``; ``fit(entry, k)`` prepares universal attacks."""
    num_classes = len(getattr(dataset, "classes", [])) or None
    bar.set_description("clean")
    clean_pass(store, net, dataset, batches, device, num_classes, bar)
    resolved = suite.resolved()["attacks"]
    for k, entry in enumerate(suite.entries):
        bar.set_description(entry.name)
        kind = getattr(entry.attack, "input_kind", "image")
        aid = store.attack_id(entry.name, entry.attack_key, resolved[k], entry.eps, entry.norm, kind)
        done = store.attacked(aid)
        pending = [c for c in batches if c[0] not in done]
        attack = entry.attack
        if pending and callable(getattr(attack, "fit", None)):
            attack = fit(entry, k)
        attack_pass(store, aid, k, entry, attack, net, dataset, batches, device, seed, gallery, bar)
