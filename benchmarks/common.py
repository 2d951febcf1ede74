"""Timing and memory helpers shared by the benchmarks, and the repository's recipes (``repo_suite``).

Timing (``compare``): the functions being compared run *interleaved*, round by round, in a rotating
order, after ``warmup`` untimed rounds. On a machine shared with other jobs the load drifts over
minutes; interleaving exposes every function to the same drift, and the ratio of two functions is
taken per round (both timed within seconds of each other) and then summarized by its median. Each
call is timed with ``time.perf_counter`` on CPU, and with CUDA events after a
``torch.cuda.synchronize`` on CUDA (the event pair brackets exactly the queued work of the call).

Memory (``peak_memory``): the peak of *additional* tensor memory while a function runs, above what
was allocated before it started.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (includes cuDNN
  workspaces and everything else the caching allocator hands out).
- CPU: a ``TorchDispatchMode`` sees every tensor every ATen operator returns, forward and backward,
  and keeps a weak reference to its storage; live bytes are the sum over storages not yet freed,
  the peak is taken after every operator. Returns the operator's schema marks as aliases of an
  argument (views such as ``detach``, in-place and ``out=`` writes) are not new memory and are not
  counted: otherwise a tensor that existed before, like the input of the bare pass, would count. This counts exactly the tensors (activations saved for
  backward, gradients, attack state), independent of the process allocator's caching and of the
  other processes on the machine, which make RSS-based figures (``ru_maxrss``, ``tracemalloc``
  does not even see ATen's allocations) useless for ratios of a few percent. Kernel-internal
  scratch buffers (oneDNN workspaces) are not tensors and are not counted.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class Timing:
    """Seconds of every timed call of one function."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the timed calls."""
        return (min(self.times), max(self.times)) if self.times else (math.nan, math.nan)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.spread
        return {
            "median_s": self.median,
            "min_s": lo,
            "max_s": hi,
            "reps": len(self.times),
            "times_s": self.times,
        }


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (CUDA events on CUDA), and its return value."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(dev)
        return start.elapsed_time(end) / 1000.0, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(
    fns: dict[str, Callable[[], Any]], *, device: torch.device | str, reps: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time every function ``reps`` times, interleaved round by round in a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        sync(device)
    out = {name: Timing(name) for name in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            seconds, _ = time_call(fns[name], device)
            out[name].times.append(seconds)
    return out


def ratio(timings: dict[str, Timing], num: str, den: str) -> dict[str, float]:
    """Median over rounds of time[num] / time[den] (same round), with the min and max over rounds."""
    rs = [a / b for a, b in zip(timings[num].times, timings[den].times, strict=True) if b > 0]
    if not rs:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode that are still alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self.refs.items() if ref.expired()]
        for k in dead:
            self.current -= self.refs.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        returns = func._schema.returns
        results = out if isinstance(out, tuple | list) and len(returns) > 1 else (out,)
        for ret, value in zip(returns, results, strict=False):
            if ret.alias_info is not None:
                continue  # a view of, or an in-place / out= write to, an argument: no new memory
            self._count(value)
        self.peak = max(self.peak, self.current)
        return out

    def _count(self, value: Any) -> None:
        for t in tree_leaves(value):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.refs:
                    self.refs[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak additional tensor bytes while ``fn`` runs (see the module docstring for the method)."""
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - base)
    with LiveTensorBytes() as tracker:
        fn()
    return int(tracker.peak)


def input_gradient_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One bare forward plus input-gradient backward (cross-entropy), the unit of the overhead bound."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(leaf), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return grad


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, parameters not requiring grad (what robustkit's attacks see inside ``preserved``)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def thawed(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, parameters requiring grad: how a user hands a freshly built model to a library."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


FAST = {"fold_bn": True, "channels_last": True, "amp": "bf16"}


def fast_copy(model: torch.nn.Module) -> Any:
    """A copy of ``model`` behind robustkit's fast path, at the precisions attacks declare
    (``robustkit.models.fastpath.Precisions``; attacks run ``.fast``): what a user gets from
    ``robustkit evaluate --fold-bn --channels-last --amp bf16``. The copy, because ``thawed`` sets
    requires_grad and the peers must see the model untouched. Call attacks with ``judged(...)``, as the
    runner does; robust accuracy is still taken with the fp32 model (``robust_accuracy``)."""
    import copy

    from robustkit.models.fastpath import make_fastpath

    return make_fastpath(**FAST).precisions(thawed(copy.deepcopy(model)))


def judged(models: Any) -> dict[str, Any]:
    """The keywords the runner gives an attack behind the fast path: the criterion with the fast path's
    tolerance and the precisions (the Square stage in fp32, every final verdict by the fp32 model)."""
    from robustkit.attacks.criteria import Misclassification

    return {"criterion": Misclassification(margin=models.tolerance), "precisions": models}


def bf16_note(device: torch.device | str) -> str:
    """Whether this CPU runs bf16 natively (oneDNN); without it the fast path is slower, not faster."""
    if torch.device(device).type == "cuda":
        return "CUDA"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "native bf16 on this CPU" if native else "this CPU emulates bf16: the fast path is slower here"


def robust_accuracy(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Accuracy of an independent fp32 eval forward pass on the adversarial examples."""
    model.eval()
    with torch.no_grad(), torch.autocast(x_adv.device.type, enabled=False):
        pred = torch.cat([model(x_adv[i : i + batch].float()).argmax(1) for i in range(0, len(x_adv), batch)])
    return float((pred == y).float().mean())


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table of ``rows`` (dicts) over ``columns``."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def environment(device: torch.device | str) -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    dev = torch.device(device)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "cpu_count": _cpu_count(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    try:
        import os

        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def repo_suite(name: str):
    """The suite ``name`` from this repository's ``attacks/<name>.yaml`` when it exists (the recipes being
    measured, whatever robustkit is installed), else as ``load_suite`` resolves the name."""
    from pathlib import Path

    from robustkit.evaluation.suite import load_suite

    path = Path(__file__).resolve().parents[1] / "attacks" / f"{name}.yaml"
    return load_suite(str(path) if path.is_file() else name)
