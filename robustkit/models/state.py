"""Leave a model exactly as it was found: training flags, requires_grad, .grad and buffers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def preserved(model: object, *, freeze: bool = True) -> Iterator[None]:
    """Snapshot the model's mutable state and restore it bit for bit on exit.

    With ``freeze`` the parameters stop requiring grad inside the block, so attacks never build
    parameter gradients (they take gradients with respect to the input only).
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag, g in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
