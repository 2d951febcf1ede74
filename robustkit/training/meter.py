"""The training cost: network passes counted by hooks, seconds per step, and the same figures for one
standard-training step of a reference network (the unit a recipe's cost is expressed in)."""

from __future__ import annotations

import time
from collections import defaultdict
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PassMeter:
    """Counts forward and backward passes of the named networks, in units of one training batch.

    A forward pass over 2B rows (clean + adversarial) counts 2; a backward pass is counted when a
    gradient reaches the network's output (parameter or input gradients alike).
    """

    def __init__(self, networks: dict[str, nn.Module], batch_size: int) -> None:
        self.batch_size = batch_size
        self.forward: dict[str, float] = defaultdict(float)
        self.backward: dict[str, float] = defaultdict(float)
        self._handles = [m.register_forward_hook(partial(self._hook, name)) for name, m in networks.items()]

    def _hook(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        outs = (
            [output]
            if isinstance(output, torch.Tensor)
            else [o for o in output if isinstance(o, torch.Tensor)]
        )
        if not outs:
            return
        units = outs[-1].shape[0] / self.batch_size
        self.forward[name] += units
        if outs[-1].requires_grad:
            outs[-1].register_hook(lambda grad: self._backward(name, units))

    def _backward(self, name: str, units: float) -> None:
        self.backward[name] += units

    def totals(self) -> dict[str, Any]:
        fwd, bwd = sum(self.forward.values()), sum(self.backward.values())
        return {
            "forward": fwd,
            "backward": bwd,
            "total": fwd + bwd,
            "by_network": {
                n: {"forward": self.forward[n], "backward": self.backward[n]} for n in self.forward
            },
        }

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def reference_cost(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, steps: int = 4
) -> dict[str, float]:
    """Passes and seconds of one standard-training step (CE, backward, SGD) of the reference network
    ``net`` (a fresh network: this trains it for a few steps)."""
    net = net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    meter = PassMeter({"model": net}, x.shape[0])
    seconds = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - t0
        else:
            meter.forward.clear()
            meter.backward.clear()
    meter.close()
    return {"passes_per_step": meter.totals()["total"] / steps, "seconds_per_step": seconds / steps}


def summarize_cost(
    totals: dict[str, Any], steps: int, seconds: float, reference: dict[str, float]
) -> dict[str, Any]:
    per = {k: totals[k] / max(steps, 1) for k in ("forward", "backward", "total")}
    sps = seconds / max(steps, 1)
    return {
        "steps": steps,
        "passes_per_step": per,
        "passes_by_network": {
            n: {k: v / max(steps, 1) for k, v in d.items()} for n, d in totals["by_network"].items()
        },
        "seconds_per_step": sps,
        "reference": reference,
        "relative_passes": per["total"] / reference["passes_per_step"]
        if reference.get("passes_per_step")
        else None,
        "relative_seconds": sps / reference["seconds_per_step"]
        if reference.get("seconds_per_step")
        else None,
    }
