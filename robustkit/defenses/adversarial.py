"""The inner maximization of adversarial training: L-inf PGD from a random start (Madry et al. 2018), and
the pieces every adversarial recipe's loss shares.

``pgd_examples`` runs robustkit's PGD loop (``robustkit.attacks.pgd.gradient_ascent``) and, as in Madry's
recipe, returns the *last* iterate (never stopping early at the first misclassified point). ``mode``
says which mode the model is in while the attack runs: ``"train"`` (the mode it is in; dropout and drop
path active, BN on batch statistics) or ``"eval"`` (the official NoFrost code's
``ctx_noparamgrad_and_eval``: dropout and drop path off, BN on running statistics). Either way the
model's modes, parameter flags and gradients and its BN running statistics are restored afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import Counter
from ..attacks.pgd import gradient_ascent
from ..errors import ConfigError
from ..models.state import preserved
from ..threat import make_threat
from ..training.settings import ATTACK_MODES, StepContext


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None,
    mode: str = "train",
) -> torch.Tensor:
    """Adversarial examples for training: ``steps`` signed-gradient steps of CE inside the L-inf ball,
    with the model in ``mode`` ("train": as it is; "eval": ``model.eval()``) during the attack."""
    if mode not in ATTACK_MODES:
        raise ConfigError(f"attack mode must be one of {', '.join(ATTACK_MODES)}, got {mode!r}")
    threat = make_threat("Linf", eps)
    with preserved(model):  # parameters frozen during the attack; modes and BN buffers restored afterwards
        if mode == "eval":
            model.eval()
        never = torch.full_like(y, -1)  # an impossible target: the loop never stops early
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


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The inner attack of a training step as the settings describe it: PGD with ``ctx.budget()`` (eps and
    step size: zero during ``clean_phase``, where the clean batch is returned, then ramped during
    ``eps_warmup``), ``settings.steps`` steps, the model in ``settings.attack_mode``."""
    eps, step_size = ctx.budget()
    if eps == 0:
        return x
    s = ctx.settings
    return pgd_examples(
        model, x, y, eps=eps, steps=s.steps, step_size=step_size, generator=ctx.generator, mode=s.attack_mode
    )


def training_ce(logits: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Cross-entropy with the recipe's label smoothing (``settings.label_smoothing``)."""
    return F.cross_entropy(logits, y, label_smoothing=ctx.settings.label_smoothing)
