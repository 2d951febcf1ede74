"""What counts as a successful attack, foolbox style, and the one confirmation of a claimed success.

A criterion decides, from a model's logits, which samples are adversarial:

- ``Misclassification(margin=0.0)``: the predicted class is not the label,
- ``TargetedMisclassification(target, margin=0.0)``: the predicted class is ``target`` (one class per
  sample, a tensor (B,)).

``margin`` > 0 asks for a clear decision: the winning logit must lead by at least
``margin * max |logit|``. The runner passes ``Misclassification(margin=...)`` with the fast path's bf16
tolerance (``robustkit.models.fastpath.Precisions.tolerance``), so that an attack running under bf16
stops on a sample only once rounding cannot have faked its success; with an fp32 model the margin is 0.
An attack is called with ``criterion=`` (default ``Misclassification()``); a
``TargetedMisclassification`` is the same as passing ``target=``.

``confirm(model, threat, x, x_adv, y)`` is the verdict that counts, for the runner and for AutoAttack
alike: an independent fp32 forward pass of ``model`` in the mode it was given (its deployed mode: a
model with BatchNorm in train mode is judged in train mode) with autocast off, and the check that
``x_adv`` stays inside the threat model's bound and the [0, 1] box (with a small tolerance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from ..errors import ConfigError
from ..functional.losses import cw_margin
from ..models.state import preserved
from ..threat import ThreatModel


def is_success(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, tolerance: float = 0.0
) -> torch.Tensor:
    """Misclassified (or classified as ``target``); with ``tolerance`` > 0, by a margin of at least
    ``tolerance * max |logit|`` (a verdict that the rounding of a bf16 forward pass cannot flip)."""
    if tolerance > 0:
        return cw_margin(logits, y, target) > tolerance * logits.abs().amax(1)
    pred = logits.argmax(1)
    return pred == target if target is not None else pred != y


class Criterion:
    """Base class: ``criterion(logits, y)`` -> bool tensor (B,), True where the sample is adversarial.

    An attack that changes its targets (APGD-T, FAB-T) or works on a subset of the batch passes the
    per-sample ``target`` of the run explicitly: ``criterion(logits, y, target)``.
    """

    margin: float
    target: torch.Tensor | None  # the target classes (B,) of a targeted criterion, else None

    def __post_init__(self) -> None:
        if not isinstance(self.margin, int | float) or isinstance(self.margin, bool) or self.margin < 0:
            raise ConfigError(f"a criterion's margin must be a number >= 0, got {self.margin!r}")

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        return is_success(logits, y, self.target if target is None else target, self.margin)

    def with_margin(self, margin: float) -> Criterion:
        """The same criterion with another margin (``with_margin(0.0)``: the exact decision)."""
        return dataclasses.replace(self, margin=margin)  # type: ignore[type-var]


@dataclass(frozen=True)
class Misclassification(Criterion):
    """Adversarial where the predicted class is not the label (by ``margin``, see the module docstring)."""

    margin: float = 0.0
    target: ClassVar[None] = None


@dataclass(frozen=True, eq=False)
class TargetedMisclassification(Criterion):
    """Adversarial where the predicted class is ``target`` (B,) (by ``margin``)."""

    target: torch.Tensor  # type: ignore[assignment]
    margin: float = 0.0


def resolve(
    criterion: Criterion | None, target: torch.Tensor | None
) -> tuple[Criterion, torch.Tensor | None]:
    """The criterion and the per-sample target of an attack call given ``criterion=`` and ``target=``."""
    if criterion is None:
        criterion = Misclassification()
    if not isinstance(criterion, Criterion):
        raise ConfigError(
            f"criterion must be a robustkit.attacks.criteria.Criterion (Misclassification or "
            f"TargetedMisclassification), got {type(criterion).__name__}"
        )
    if criterion.target is None:
        return criterion, target
    if target is not None and target is not criterion.target and not torch.equal(target, criterion.target):
        raise ConfigError("target= and criterion=TargetedMisclassification(...) name different targets")
    return criterion, criterion.target


def fp32_logits(model: Callable, x: torch.Tensor) -> torch.Tensor:
    """An independent forward pass of ``model`` with autocast off, in fp32, in the mode the model was
    given (never ``.eval()`` behind the user's back: a model with BatchNorm in train mode is deployed
    that way); its state (buffers such as BatchNorm running statistics) is left as it was."""
    off = torch.autocast(x.device.type, enabled=False)
    with preserved(model, freeze=False), torch.no_grad(), off, ieee_fp32(x.device.type):
        return model(x.float()).float()


@contextmanager
def ieee_fp32(device_type: str) -> Iterator[None]:
    """On CUDA, convolutions and matrix products in IEEE fp32 for the block: cuDNN runs fp32
    convolutions in TF32 by default (10-bit mantissa) on Ampere and later, enough to flip a verdict at
    the decision boundary."""
    if device_type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Confirmation(NamedTuple):
    """``confirm``'s answer, per sample: the fp32 logits, whether they are adversarial under the
    criterion, and whether ``x_adv`` respects the bound; ``confirmed`` is both."""

    logits: torch.Tensor
    adversarial: torch.Tensor
    within: torch.Tensor

    @property
    def confirmed(self) -> torch.Tensor:
        return self.adversarial & self.within


def confirm(
    model: Callable,
    threat: ThreatModel | None,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    criterion: Criterion | None = None,
    tolerance: float = 1e-4,
    counter: Any = None,
) -> Confirmation:
    """Recheck ``x_adv`` with ``model`` (the fp32 model, never a bf16 fast path): ``fp32_logits`` judged
    by ``criterion`` (default ``Misclassification()``), and the bound: ``threat.within`` with
    ``tolerance`` and the [0, 1] box within ``tolerance``. Without an Lp bound (``threat`` None, or an
    eps that is not a finite positive float: physical attacks) every sample is within.

    ``counter`` (an attack's ``Counter``), when given, counts the forward pass.
    """
    logits = fp32_logits(model, x_adv)
    if counter is not None:
        counter.forward += 1
        counter.queries += x_adv.shape[0]
    adversarial = (criterion or Misclassification())(logits, y)
    eps = getattr(threat, "eps", None)
    if threat is None or not isinstance(eps, float) or not 0 < eps < float("inf"):
        return Confirmation(logits, adversarial, torch.ones_like(adversarial))
    x_adv = x_adv.float()
    within = threat.within(x_adv - x.float(), tolerance)
    within &= (x_adv >= -tolerance).flatten(1).all(1) & (x_adv <= 1 + tolerance).flatten(1).all(1)
    return Confirmation(logits, adversarial, within)
