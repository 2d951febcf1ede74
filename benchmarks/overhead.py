"""PGD against its lower bound: time and peak memory relative to bare forward+input-gradient passes.

An L-step gradient attack cannot cost less than L forward passes plus L input-gradient backward
passes of the model. ``overhead`` times robustkit's ``PGD(steps=L)`` (``VideoPGD`` on clips; the whole public call:
validation, state preservation, random start, the step loop and the final check of the last
iterate) against L bare ``input_gradient_pass`` calls on the same model and batch, interleaved
round by round (``common.compare``). ``eps`` is tiny and the labels are the model's own clean
predictions, so no sample succeeds early and PGD does all L steps on the whole batch (compaction
would otherwise make it *cheaper* than the bound; the pass counters in the result confirm the work).

``memory`` measures the peak additional tensor memory of the same PGD call and of one bare pass.
The model is handed over with parameters requiring grad, as a user would; PGD must not build
parameter gradients (the bare pass is run with frozen parameters: the bound). The bare pass
differentiates with respect to an input that already exists; PGD cannot do with less than the clean
input plus one buffer for its iterate, so its floor is one bare pass plus one input. That is about
1% for the ResNet and X3D-XS, and 21% for SmallVideoNet, whose activations are only about 3.7
inputs: no PGD can meet a 1.2 ratio there.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from benchmarks.common import compare, frozen, input_gradient_pass, peak_memory, ratio, thawed
from robustkit.attacks.pgd import PGD
from robustkit.attacks.video_pgd import VideoPGD


def cifar_case(batch: int, device: torch.device) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """The CIFAR-size SmallResNet (16-32-64-128 channels, 32x32 input, 10 classes)."""
    from robustkit.models.resnet import SmallResNet

    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return "SmallResNet 3x32x32", SmallResNet(10).to(device).eval(), x.to(device)


def video_case(batch: int, device: torch.device) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """The video model of ``shapes-video`` (SmallVideoNet, 3x8x32x32 clips, 8 classes)."""
    from robustkit.models.video import SmallVideoNet

    torch.manual_seed(0)
    x = torch.rand(batch, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    return "SmallVideoNet 3x8x32x32", SmallVideoNet(8).to(device).eval(), x.to(device)


def x3d_case(batch: int, device: torch.device) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """pytorchvideo's X3D-XS at its own clip size (4 frames of 160x160), randomly initialized: a
    video model of the size people attack, where activations dwarf the input (SmallVideoNet's are
    only about 3.7 inputs, so any PGD's one iterate buffer is a fifth of its bare pass)."""
    from benchmarks.common import frozen
    from robustkit.models.video import video_model

    torch.manual_seed(0)
    x = torch.rand(batch, 3, 4, 160, 160, generator=torch.Generator().manual_seed(0))
    return "X3D-XS 3x4x160x160", frozen(video_model("x3d_xs", 10)).to(device), x.to(device)


def overhead(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 10,
    eps: float = 1e-4,
    reps: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """PGD time / (steps bare passes), and PGD peak memory / one bare pass. Clips (5-D ``x``) are
    attacked with ``video-pgd`` (what the video suite runs), images with ``pgd``."""
    device = x.device
    with torch.no_grad():
        y = frozen(model)(x).argmax(1)
    if x.ndim == 5:
        attack = VideoPGD(eps=eps, steps=steps, step_size=None)
    else:
        attack = PGD(eps=eps, steps=steps)
    counters: dict[str, int] = {}

    def pgd() -> None:
        thawed(model)
        res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        counters.update(res.counters)
        frozen(model)

    def bare() -> None:
        for _ in range(steps):
            input_gradient_pass(model, x, y)

    frozen(model)
    start = time.perf_counter()
    bare()
    # a small model's call lasts milliseconds, where a scheduler hiccup is a large share: more rounds,
    # about 3 s of each function in all, steady the median
    reps = max(reps, min(50, math.ceil(3.0 / max(time.perf_counter() - start, 1e-3))))
    t = compare({"pgd": pgd, "bare": bare}, device=device, reps=reps, warmup=warmup)
    r = ratio(t, "pgd", "bare")
    thawed(model)
    mem_pgd = peak_memory(lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0)), device)
    frozen(model)
    mem_bare = peak_memory(lambda: input_gradient_pass(model, x, y), device)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return {
        "case": name,
        "attack": "video-pgd" if x.ndim == 5 else "pgd",
        "batch": int(x.shape[0]),
        "steps": steps,
        "pgd": t["pgd"].as_dict(),
        "bare": t["bare"].as_dict(),
        "overhead_ratio": r,
        "counters": counters,
        "full_work": counters.get("backward") == steps
        and counters.get("queries") == (steps + 1) * x.shape[0],
        "peak_bytes_pgd": mem_pgd,
        "peak_bytes_bare": mem_bare,
        "memory_ratio": mem_pgd / mem_bare if mem_bare else float("nan"),
        "parameter_grads_left": len(grads),
    }
