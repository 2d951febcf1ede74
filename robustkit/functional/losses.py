"""Per-sample attack losses. Each returns a tensor of shape (B,) that the attacker maximizes.

For targeted attacks ``target`` holds the target classes and the loss rises as the target wins.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import suggest


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the true class (untargeted) or minus cross-entropy of the target."""
    if target is not None:
        return -F.cross_entropy(logits, target, reduction="none")
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit[y] - max_{j != y} logit[j]; negative means misclassified."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def cw_margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini-Wagner margin loss: max_{j != y} z_j - z_y, or z_t - max_{j != t} z_j when targeted."""
    if target is not None:
        return margin(logits, target)
    return -margin(logits, y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), untargeted; targeted variant when ``target``."""
    if target is not None:
        return targeted_dlr_loss(logits, y, target)
    srt = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None])[:, 0]
    top_is_true = (logits.argmax(1) == y).to(logits.dtype)
    best_other = srt[:, -2] * top_is_true + srt[:, -1] * (1.0 - top_is_true)
    return -(true - best_other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    srt = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None])[:, 0]
    tgt = logits.gather(1, target[:, None])[:, 0]
    return -(true - tgt) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


LossFn = Callable[..., torch.Tensor]
LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "cw": cw_margin}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}'{suggest(name, list(LOSSES))}. Known: {', '.join(LOSSES)}.")
    return LOSSES[name]
