"""Where the time of an evaluation went: per attack (and per ensemble stage), with pass counts.

``profile_run(run_dir, model=..., x=..., y=...)`` reads a run's results store — every batch row holds
the attack's wall time and its counters (batched ``forward`` / ``backward`` passes, per-sample
``queries``) — and, when a model and a sample batch are given, times the model's own passes on that
batch to estimate how much of each attack's time the model itself accounts for:

- ``t_fwd``: seconds per sample of a no-grad forward pass,
- ``t_bwd``: seconds per sample of an input-gradient backward pass (forward+backward minus forward).

An attack's model-time estimate is ``queries * t_fwd + queries * backward / forward * t_bwd`` (the
share of its passes that were followed by a backward pass, at the per-sample cost measured at the
calibration batch size); ``overhead`` is its wall time divided by that estimate. An overhead well
above 1 points at time spent outside the model (host round trips, Python per-sample loops).
The rest of the run (``other``) is the recheck, the store and the report.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from .metrics import total_counters
from .store import STORE_FILE, Store

PROFILE_FILE = "profile.json"


def _timed(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def pass_costs(model: Callable, x: torch.Tensor, y: torch.Tensor, reps: int = 3) -> dict[str, float]:
    """Per-sample seconds of a no-grad forward pass and of an input-gradient backward pass."""
    from ..models.state import preserved

    n = x.shape[0]

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def fwd_bwd() -> None:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(leaf).float(), y)
            torch.autograd.grad(loss, leaf)

    with preserved(model):
        t_f = _timed(fwd, x.device, reps)
        t_fb = _timed(fwd_bwd, x.device, reps)
    return {"batch": n, "t_fwd": t_f / n, "t_bwd": max(t_fb - t_f, 0.0) / n}


def _model_seconds(counters: dict[str, Any], costs: dict[str, float] | None) -> float | None:
    fwd, bwd, queries = (int(counters.get(k, 0)) for k in ("forward", "backward", "queries"))
    if costs is None or fwd <= 0 or queries <= 0:
        return None
    return queries * costs["t_fwd"] + queries * min(bwd / fwd, 1.0) * costs["t_bwd"]


def _row(name: str, seconds: float, counters: dict[str, Any], total: float, costs, samples=None) -> dict:
    est = _model_seconds(counters, costs)
    return {
        "name": name,
        "seconds": seconds,
        "share": seconds / total if total > 0 else None,
        "samples": samples,
        "forward": int(counters.get("forward", 0)),
        "backward": int(counters.get("backward", 0)),
        "queries": int(counters.get("queries", 0)),
        "model_seconds_est": est,
        "overhead_est": seconds / est if est else None,
    }


def profile_store(store: Store, costs: dict[str, float] | None = None) -> dict[str, Any]:
    """The profile of the run in ``store`` (see the module docstring)."""
    total = float(store.meta("elapsed", 0.0) or 0.0)
    clean = store.batches("clean")
    clean_s = sum(b.seconds for b in clean)
    rows = [_row("clean pass", clean_s, {}, total, None, sum(b.size for b in clean))]
    attack_s = 0.0
    for a in store.attacks():
        batches = store.batches(a["name"])
        seconds = sum(b.seconds for b in batches)
        attack_s += seconds
        row = _row(a["name"], seconds, total_counters(batches), total, costs, sum(b.size for b in batches))
        row["stages"] = _stages(store, a["id"], total, costs)
        rows.append(row)
    other = max(total - clean_s - attack_s, 0.0)
    rows.append(_row("other (recheck, store, sanity)", other, {}, total, None))
    return {"total_seconds": total, "pass_costs": costs, "rows": rows}


def _stages(store: Store, attack_id: int, total: float, costs) -> list[dict[str, Any]]:
    """Per-stage totals of an ensemble, from its per-batch ``cascade`` artifacts."""
    seconds: dict[str, float] = defaultdict(float)
    counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    attacked: dict[str, int] = defaultdict(int)
    for cascade in store.json_artifacts(attack_id, "cascade"):
        for entry in cascade:
            name = str(entry.get("attack"))
            seconds[name] += float(entry.get("seconds", 0.0))
            attacked[name] += int(entry.get("attacked", 0))
            for k, v in (entry.get("counters") or {}).items():
                counters[name][k] += int(v)
    return [_row(n, seconds[n], counters[n], total, costs, attacked[n]) for n in seconds]


def profile_run(
    run_dir: str | Path,
    model: Callable | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Profile a run directory; with ``model``, ``x``, ``y`` also estimate model time per attack."""
    run_dir = Path(run_dir)
    costs = pass_costs(model, x, y) if model is not None and x is not None and y is not None else None
    store = Store(run_dir / STORE_FILE)
    try:
        out = profile_store(store, costs)
    finally:
        store.close()
    if write:
        atomic_write(run_dir / PROFILE_FILE, json.dumps(out, indent=2))
    return out


def format_profile(profile: dict[str, Any]) -> str:
    """A fixed-width table of a profile."""
    head = f"{'where':<34} {'seconds':>9} {'share':>6} {'fwd':>6} {'bwd':>6} {'queries':>9} {'overhead':>8}"
    lines = [head, "-" * len(head)]

    def line(r: dict[str, Any], indent: str = "") -> str:
        share = f"{100 * r['share']:5.1f}%" if r["share"] is not None else "     -"
        over = f"{r['overhead_est']:8.2f}" if r["overhead_est"] is not None else "       -"
        name = (indent + r["name"])[:34]
        return (
            f"{name:<34} {r['seconds']:9.2f} {share:>6} {r['forward']:6d} {r['backward']:6d} "
            f"{r['queries']:9d} {over}"
        )

    for r in profile["rows"]:
        lines.append(line(r))
        lines += [line(s, "  . ") for s in r.get("stages", [])]
    lines.append(f"{'total':<34} {profile['total_seconds']:9.2f}")
    costs = profile.get("pass_costs")
    if costs:
        lines.append(
            f"model pass cost at batch {costs['batch']}: forward {1e3 * costs['t_fwd']:.3f} ms/sample, "
            f"input-gradient backward {1e3 * costs['t_bwd']:.3f} ms/sample (overhead = seconds / estimate)"
        )
    return "\n".join(lines)
