"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``; gloo on CPU, NCCL on GPU).

Every process runs the same loop on its shard of the same global batch: with W processes and global
batch B, process r takes rows ``[r B/W, (r+1) B/W)``. BatchNorm layers normalize with the statistics of
the global batch (``synced_batchnorm``: two differentiable all-reduces per layer, so gradients, input
gradients of an inner attack included, are those of the global batch), and after the backward pass the
gradients are averaged (``average_gradients``). Everyone then takes the same optimizer step, so the
weights stay identical and equal to those of one process at the same global batch, up to rounding.

Why not ``torch.nn.parallel.DistributedDataParallel`` and ``nn.SyncBatchNorm``: adversarial training
calls the model many times per step for input gradients only, which DDP's reducer (one forward, one
backward over the parameters) refuses, and ``nn.SyncBatchNorm`` runs on GPUs only. The all-reduce here
is one flat buffer per step.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher setting WORLD_SIZE) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under a launcher, ``cuda`` without an index means this process's GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (env://): NCCL for CUDA devices, gloo otherwise.
    Returns True when this call created it (then ``close_distributed`` ends it)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run with one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    log.info("process %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shard_rows(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` this process trains on."""
    rank, size = world()
    if batch_size % size:
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) must be divisible by the {size} processes; "
            f"each takes batch_size / {size} rows"
        )
    per = batch_size // size
    return slice(rank * per, (rank + 1) * per)


def average_gradients(params: list[nn.Parameter], loss: torch.Tensor) -> float:
    """Average the gradients of ``params`` (a parameter without a gradient anywhere keeps none) and the
    loss over the processes; returns the averaged loss."""
    size = world()[1]
    if size == 1:
        return float(loss.detach())
    parts = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=parts[0].dtype, device=parts[0].device)
    flat = torch.cat([*parts, flags, loss.detach().float().reshape(1).to(parts[0])])
    dist.all_reduce(flat)
    flat /= size
    have = flat[-1 - len(params) : -1].tolist()  # one device-to-host copy, not one per parameter
    offset = 0
    for p, has in zip(params, have, strict=True):
        n = p.numel()
        if has > 0:
            p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return float(flat[-1])


def all_mean(value: float, device: torch.device) -> float:
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world()[1]


# ----------------------------------------------------------------------------- BatchNorm over the global batch
def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the processes (its gradient is the sum of the processes' gradients)."""
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

    return differentiable_all_reduce(tensor)


def _global_batch_norm(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn`` in training mode with the mean and (biased) variance of the global batch."""
    dims = [0, *range(2, x.ndim)]
    count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
    dist.all_reduce(count)
    xf = x.float()
    mean = all_reduce(xf.sum(dims)) / count
    shape = (1, -1) + (1,) * (x.ndim - 2)
    centred = xf - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims)) / count
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1).clamp_min(1)
            bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var), alpha=momentum)
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    return out.to(x.dtype)


def _synced_forward(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not self.training or world()[1] == 1:
        return type(self).__mro__[1].forward(self, x)
    self._check_input_dim(x)
    out = _global_batch_norm(self, x)
    if hasattr(self, "act") and hasattr(self, "drop"):  # timm's BatchNormAct2d: norm, drop, act
        out = self.act(self.drop(out))
    return out


_SYNCED: dict[type, type] = {}


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED:
        _SYNCED[cls] = type(f"Synced{cls.__name__}", (cls,), {"forward": _synced_forward})
    return _SYNCED[cls]


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[int]:
    """While inside, every BatchNorm layer of ``model`` in training mode normalizes with the statistics of
    the global batch (all processes); yields the number of layers synchronized. Outside a process group
    this does nothing. The layers keep their parameters and buffers (their class is swapped back after)."""
    if world()[1] == 1:
        yield 0
        return
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in layers:
        cls = type(m)
        plain = cls.forward is _BatchNorm.forward
        timm_act = cls.__name__ == "BatchNormAct2d" and hasattr(m, "act")
        if not (plain or timm_act):
            raise ConfigError(
                f"cannot synchronize the BatchNorm layer {cls.__name__} across processes (its forward is its "
                "own); train this architecture with one process"
            )
    originals = [type(m) for m in layers]
    try:
        for m, cls in zip(layers, originals, strict=True):
            m.__class__ = _synced_class(cls)
        yield len(layers)
    finally:
        for m, cls in zip(layers, originals, strict=True):
            m.__class__ = cls


def broadcast_model(model: nn.Module) -> None:
    """Make every process start from rank 0's parameters and buffers."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)
