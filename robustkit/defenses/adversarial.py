"""The inner maximization of adversarial training: L-inf PGD from a random start (Madry et al. 2018).

It runs robustkit's PGD loop (``robustkit.attacks.pgd.gradient_ascent``) and, as in Madry's recipe,
returns the *last* iterate (never stopping early at the first misclassified point). The model stays in
the training mode it is in; BN running statistics moved by the attack's forward passes are restored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import Counter
from ..attacks.pgd import gradient_ascent
from ..models.state import preserved
from ..threat import make_threat


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Adversarial examples for training: ``steps`` signed-gradient steps of CE inside the L-inf ball."""
    threat = make_threat("Linf", eps)
    with preserved(model):  # parameters frozen during the attack; BN buffers restored afterwards
        never = torch.full_like(
            y, -1
        )  # an impossible target: the loop never stops early, returns the last iterate
        x_adv, _ = gradient_ascent(
            model,
            x,
            y,
            threat,
            steps=steps,
            step_size=step_size,
            objective=lambda logits: F.cross_entropy(logits, y, reduction="none"),
            target=never,
            start=threat.init(x, generator).add_(x),
            counter=Counter(),
        )
    return x_adv.detach()
