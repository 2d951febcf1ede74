"""The attack contract: frozen keyword-only configuration, called as ``attack(model, x, y)``."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from ..functional.placement import ObjectGeometry
from ..functional.projection import batch_view
from ..functional.random import GeneratorLike, uniform
from ..models.fastpath import Precisions
from ..models.state import preserved
from ..registry import Registry
from ..validate import check_inputs, check_labels
from .criteria import Criterion, Misclassification, is_success, resolve

RESULT = "result"  # field metadata of what an attack trained (a universal frame, its cost): not configuration
ATTACKS: Registry[Attack] = Registry("attack", autoload=("robustkit.attacks",))
register = ATTACKS.register
T = TypeVar("T")


@dataclass
class AttackResult:
    """What an attack returns.

    ``x_adv`` has the shape, dtype and device of ``x``; ``success`` is a bool tensor (B,);
    ``counters`` counts model calls (``forward``, ``backward``: batched passes; ``queries``:
    per-sample forward evaluations). ``artifacts`` holds what was optimized (patch, texture,
    position) and sampled transformation parameters; ``metrics`` per-sample tensors (B,).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    logits: torch.Tensor | None = None
    counters: dict[str, int] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Counter:
    """Counts batched forward / backward passes and per-sample queries of one attack call."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.queries = 0

    def as_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward, "queries": self.queries}


def forward(model: Callable, x: torch.Tensor, counter: Counter) -> torch.Tensor:
    counter.forward += 1
    counter.queries += x.shape[0]
    return model(x)


def loss_and_grad(
    model: Callable,
    x_adv: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    counter: Counter,
    wrt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, logits and the gradient of the summed loss with respect to the input only.

    ``wrt`` is the leaf to differentiate (default ``x_adv`` itself); ``x_adv`` may be a function of it.
    """
    leaf = x_adv if wrt is None else wrt
    with torch.enable_grad():
        if wrt is None:
            leaf = x_adv.detach().requires_grad_(True)
            x_adv = leaf
        logits = forward(model, x_adv, counter)
        loss = objective(logits)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    counter.backward += 1
    return loss.detach(), logits.detach(), grad


@dataclass(frozen=True)
class Judge:
    """How one attack call decides success: ``criterion`` on the logits of the model it attacks, and
    the last word of ``precisions.reference``, the fp32 model (``verdict``).

    ``tentative`` is True when the criterion asks for a margin (the attack runs under bf16, see
    ``robustkit.attacks.criteria``): the attack's own decisions are then only sure ones, and it reports
    the fp32 verdict on its results, so that no example adversarial in fp32 goes unreported.

    ``whole_batch`` is True for a batch-dependent model (``Precisions.batch_dependent``): the attack then
    calls the model only on the whole batch it was given, rows in order (no compaction, no subsets, no
    stacked restarts), and a row it has broken stays in the batch, no longer updated; a later run
    (restart, target) sees the broken rows held at their adversarial points (``holding``). Every
    forward pass, the verdict's included, runs in the mode the model was given. ``tentative`` is also
    True for a surrogate (``Precisions.surrogate``), whose logits never decide success (``decide``).
    """

    criterion: Criterion
    precisions: Precisions

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The criterion on ``logits``, aimed at ``target`` (the run's per-sample targets) when given."""
        return is_success(logits, y, target, self.criterion.margin)

    @property
    def tentative(self) -> bool:
        return self.criterion.margin > 0 or self.precisions.surrogate

    def decide(
        self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        counter: Counter,
    ) -> torch.Tensor:  # fmt: skip
        """An attack's decision at ``x_adv`` whose logits (of the model it attacks) are ``logits``: the
        criterion on them, or behind a surrogate the ``verdict`` of the deployed model at ``x_adv``."""
        if self.precisions.surrogate:
            return self.verdict(x_adv.detach(), y, target, counter)
        return self(logits, y, target)

    @property
    def whole_batch(self) -> bool:
        return self.precisions.batch_dependent

    def holding(self, model: Callable, rows: torch.Tensor, values: torch.Tensor) -> tuple[Callable, Judge]:
        """``model`` (one of ``precisions``' members) and this judge with the rows ``rows`` (bool (B,))
        of every batch held at ``values`` (``Held``): what a run on the whole batch attacks when some
        rows are already broken."""
        rows, values = rows.clone(), values.detach().clone()
        held: dict[int, Held] = {}

        def hold(m: Callable) -> Held:
            return held.setdefault(id(m), Held(m, rows, values))

        p = self.precisions
        precisions = dataclasses.replace(p, fast=hold(p.fast), fp32=hold(p.fp32), reference=hold(p.reference))
        return hold(model), Judge(self.criterion, precisions)

    def verdict(
        self, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, counter: Counter
    ) -> torch.Tensor:
        """Whether ``x_adv`` succeeds, judged exactly (margin 0) by one forward pass of the fp32 model
        with autocast off, in the mode the model was given."""
        with torch.no_grad(), torch.autocast(device_type=x_adv.device.type, enabled=False):
            return is_success(forward(self.precisions.reference, x_adv, counter), y, target)

    @classmethod
    def of(cls, model: Callable) -> Judge:
        """The exact criterion on ``model`` itself: what an attack called without a criterion uses."""
        return cls(Misclassification(), Precisions.single(model))


class Held(nn.Module):
    """``model`` with the rows ``rows`` (bool (B,)) of every batch replaced by ``values``:
    ``forward(x) = model(where(rows, values, x))``, so the model sees them there and they get no
    gradient. It takes batches of B rows only (``Judge.holding``)."""

    def __init__(self, model: Callable, rows: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.model, self.rows, self.values = model, rows, values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.rows.shape[0]:
            raise ConfigError(
                f"a batch-dependent model is attacked on its whole batch of {self.rows.shape[0]} rows, and "
                f"an attack called it with {x.shape[0]}: that attack does not support batch_dependent models"
            )
        return self.model(torch.where(batch_view(self.rows, x), self.values.to(x.dtype), x))


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class. Subclasses are frozen keyword-only dataclasses and implement ``run``.

    ``precision`` declares the arithmetic the attack's decisions need: "any" (default) runs on the
    model it is given, bf16 fast path included; "fp32" (Square's random search, whose decisions hinge
    on loss differences below bf16 rounding) runs on ``precisions.fp32`` when ``precisions`` is given.
    A subclass whose ``run`` takes a ``judge`` keyword decides success with it (``Judge``).
    """

    name: ClassVar[str] = "attack"
    precision: ClassVar[str] = "any"

    def __call__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        criterion: Criterion | None = None,
        precisions: Precisions | None = None,
        generator: GeneratorLike = None,
        objects: ObjectGeometry | None = None,
    ) -> AttackResult:
        """Attack ``model`` on ``(x, y)``.

        ``criterion``: what counts as success (``robustkit.attacks.criteria``; default
        ``Misclassification()``; ``TargetedMisclassification(t)`` is the same as ``target=t``).
        ``precisions``: the model at the precisions an attack may declare (``robustkit.models.fastpath``),
        with ``model`` its ``fast`` member; the fp32 ``reference`` gives the attack's final verdicts.
        ``objects``: where the object lies in each image (``ObjectGeometry``), for attacks placed in
        object coordinates (stickers); attacks that place nothing on the object ignore it.
        """
        check_inputs(x, "x")
        check_labels(y, x.shape[0], "y")
        criterion, target = resolve(criterion, target)
        if target is not None:
            check_labels(target, x.shape[0], "target")
        if precisions is None:
            precisions = Precisions.single(model)
        elif model is not precisions.fast:
            raise ConfigError(
                "an attack called with precisions= attacks precisions.fast: pass it as the model"
            )
        model = precisions.at(self.precision)
        kwargs: dict[str, Any] = {"target": target, "generator": generator}
        if _takes(type(self), "judge"):
            kwargs["judge"] = Judge(criterion, precisions)
        if _takes(type(self), "objects"):
            if objects is not None and len(objects) != x.shape[0]:
                raise ConfigError(
                    f"objects holds the geometry of {len(objects)} images for {x.shape[0]} inputs"
                )
            kwargs["objects"] = objects
        with preserved(model), preserved(None if precisions.reference is model else precisions.reference):
            result = self.run(model, x, y, **kwargs)
        result.x_adv = result.x_adv.detach().to(dtype=x.dtype)
        return result

    def run(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None,
        generator: GeneratorLike,
    ) -> AttackResult:
        raise NotImplementedError

    def replace(self, **changes: Any) -> Attack:
        return dataclasses.replace(self, **changes)

    def params(self) -> dict[str, Any]:
        """The configuration: every init field but those that hold results (``RESULT`` metadata)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.init and not f.metadata.get(RESULT)
        }


def accepts(fn: Any, keyword: str) -> bool:
    """Whether the callable ``fn`` takes the keyword argument ``keyword`` (a bound method's function is
    asked, so that the cache holds functions, not the attacks they are bound to)."""
    return _parameters(getattr(fn, "__func__", fn), keyword)


@functools.cache
def _parameters(fn: Any, keyword: str) -> bool:
    return keyword in inspect.signature(fn).parameters


def _takes(cls: type, keyword: str) -> bool:
    return accepts(cls.run, keyword)


def positive(value: float, what: str, *, allow_zero: bool = False) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what} must be a number {bound}, got {value!r}")


def positive_ints(attack: Any, *fields: str) -> None:
    """Each named field of ``attack`` must be an integer > 0 (a ConfigError naming the field otherwise)."""
    for what in fields:
        value = getattr(attack, what)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{attack.name}: {what} must be an integer, got {value!r}")
        positive(value, f"{attack.name}: {what}")


def resolve_targets(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    *,
    targeted: bool,
    mode: str | int,
    generator: GeneratorLike,
    counter: Counter,
) -> torch.Tensor | None:
    """The classes a targeted attack aims for: ``target`` when given, else chosen by ``mode`` from the
    clean logits (one counted forward pass); None for an untargeted attack."""
    if not targeted:
        return None
    if target is not None:
        return target
    with torch.no_grad():
        logits = forward(model, x, counter)
    return choose_targets(logits, y, mode, generator)


def choose_targets(
    logits: torch.Tensor, y: torch.Tensor, mode: str | int, generator: GeneratorLike
) -> torch.Tensor:
    """Target classes for targeted attacks: 'random' (never the true class), 'least-likely', or a class id."""
    k = logits.shape[1]
    if isinstance(mode, int) and not isinstance(mode, bool):
        if not 0 <= mode < k:
            raise ConfigError(f"target class {mode} is outside [0, {k})")
        return torch.full_like(y, mode)
    if mode == "least-likely":
        return logits.argmin(1)
    if mode == "random":
        offset = (uniform((y.shape[0],), generator, y.device) * (k - 1)).long().clamp_max(k - 2) + 1
        return (y + offset) % k
    raise ConfigError(f"target must be 'random', 'least-likely' or a class index, got {mode!r}")


def generator_snapshot(generator: GeneratorLike) -> Callable[[], None]:
    """A function that puts the generator(s) back into their current state."""
    gens = (
        []
        if generator is None
        else [generator]
        if isinstance(generator, torch.Generator)
        else list(generator)
    )
    states = [g.get_state() for g in gens]

    def restore() -> None:
        for g, state in zip(gens, states, strict=True):
            g.set_state(state)

    return restore


def stacked_or_none(run: Callable[[], T], generator: GeneratorLike) -> T | None:
    """``run()``, the stacked form of an attack's runs (see ``stack_in_batch``); None, with the
    generators put back, when it does not fit in GPU memory, so that the caller runs them one by one
    from the same random draws."""
    restore = generator_snapshot(generator)
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        restore()
        return None


def repeat_runs(t: torch.Tensor, runs: int) -> torch.Tensor:
    """``runs`` copies of a batch, one after the other: the batch of a stacked attack."""
    return t.repeat(runs, *([1] * (t.ndim - 1)))


def pick_runs(stacked: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Per sample ``i``, row ``i`` of copy ``pick[i]`` of a stacked batch (``repeat_runs``)."""
    n = pick.shape[0]
    return stacked.view(-1, n, *stacked.shape[1:])[pick, torch.arange(n, device=stacked.device)]


def stack_in_batch(x: torch.Tensor) -> bool:
    """Whether an attack runs its restarts (and targets) stacked in one batch: on CUDA, where
    throughput grows with batch size; one by one on the CPU, where compute is already saturated and
    each run after the first skips the samples already broken."""
    return x.device.type == "cuda"
