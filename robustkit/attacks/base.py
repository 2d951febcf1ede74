"""The attack contract: frozen keyword-only configuration, called as ``attack(model, x, y)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from ..errors import ConfigError
from ..functional.random import GeneratorLike, uniform
from ..models.state import preserved
from ..registry import Registry
from ..validate import check_inputs, check_labels

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


def is_success(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, tolerance: float = 0.0
) -> torch.Tensor:
    """Misclassified (or classified as ``target``); with ``tolerance`` > 0, by a margin of at least
    ``tolerance * max |logit|`` (a verdict that the rounding of a bf16 forward pass cannot flip)."""
    if tolerance > 0:
        from ..functional.losses import cw_margin

        return cw_margin(logits, y, target) > tolerance * logits.abs().amax(1)
    pred = logits.argmax(1)
    return pred == target if target is not None else pred != y


def success_tolerance(model: Callable) -> float:
    """How sure a success verdict from ``model``'s logits must be to be final: 0 for an fp32 model;
    the fast path's bf16 model (``robustkit.evaluation.fastpath.FastModel``) sets its own."""
    return float(getattr(model, "success_tolerance", 0.0))


def fp32_model(model: Callable) -> Callable:
    """The full-precision model behind a fast-path model (the model itself otherwise)."""
    return getattr(model, "reference", model)


def full_precision(model: Callable) -> Callable:
    """``model`` without bf16 autocast: a bf16 fast path's fp32 form (folding and memory layout kept),
    any other model itself."""
    return getattr(model, "full_precision", model)


def verdict(
    model: Callable, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, counter: Counter
) -> torch.Tensor:
    """Whether ``x_adv`` succeeds, judged by one forward pass of the fp32 model (``fp32_model``, with
    autocast off): an attack behind a bf16 fast path reports every example that is adversarial in
    fp32, claimed inside the attack or not, and none that is not."""
    with torch.no_grad(), torch.autocast(device_type=x_adv.device.type, enabled=False):
        return is_success(forward(fp32_model(model), x_adv, counter), y, target)


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class. Subclasses are frozen keyword-only dataclasses and implement ``run``."""

    name: ClassVar[str] = "attack"

    def __call__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        generator: GeneratorLike = None,
    ) -> AttackResult:
        check_inputs(x, "x")
        check_labels(y, x.shape[0], "y")
        if target is not None:
            check_labels(target, x.shape[0], "target")
        with preserved(model):
            result = self.run(model, x, y, target=target, generator=generator)
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
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


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
