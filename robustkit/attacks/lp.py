"""The bases of the Lp attacks: ``LossAttack`` (a per-sample loss, untargeted or targeted),
``LpAttack`` (an Lp ball: ``norm`` / ``eps`` and the threat they name, held once; Square and
AutoAttack take it as it is), ``SweepAttack`` (an ``LpAttack`` made of runs per target and restart,
one by one or stacked: APGD, FAB) and ``IterativeLpAttack`` (a loss in a ball, with PGD's steps,
random start and restarts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..functional.losses import get_loss
from ..functional.random import GeneratorLike, subset
from ..threat import ThreatModel, make_threat
from .base import (
    Attack,
    AttackResult,
    Counter,
    Judge,
    forward,
    is_success,
    positive,
    resolve_targets,
    stack_in_batch,
    stacked_or_none,
)

Objective = Callable[[torch.Tensor], torch.Tensor]


def _next_post_init(after: Any) -> None:
    """Cooperative ``__post_init__``: call the next one in the MRO (``super()``), if any (``Attack``
    has none), so that the bases combine in any order."""
    post = getattr(after, "__post_init__", None)
    if post is not None:
        post()


@dataclass(frozen=True, kw_only=True)
class LossAttack(Attack):
    """An attack that ascends ``loss`` ('ce', 'dlr', 'cw', ...), per sample. ``targeted`` uses the
    ``target`` passed at call time, else picks targets by ``target_mode`` ('random', 'least-likely' or a
    class index)."""

    loss: str = "ce"
    targeted: bool = False
    target_mode: str | int = "random"

    def __post_init__(self) -> None:
        get_loss(self.loss)
        _next_post_init(super())

    def objective(self, y: torch.Tensor, target: torch.Tensor | None) -> Objective:
        """Per-row loss that rises as the attack succeeds. Logits of several rows per sample (EOT
        draws, sample-major: row ``j * B + i`` is draw ``j`` of sample ``i``) get the labels repeated."""
        fn = get_loss(self.loss)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[0] == y.shape[0]:
                return fn(logits, y, target)
            reps = logits.shape[0] // y.shape[0]
            return fn(logits, y.repeat(reps), target.repeat(reps) if target is not None else None)

        return objective

    def targets(
        self,
        model: Callable,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: GeneratorLike,
        counter: Counter,
    ) -> torch.Tensor | None:
        """The classes to aim for (None when untargeted); see ``resolve_targets``. A target given to an
        attack configured untargeted is refused rather than ignored."""
        if target is not None and not self.targeted:
            raise ConfigError(
                f"{self.name} is configured untargeted and would ignore the target it was given "
                "(target= or a TargetedMisclassification criterion); build it with targeted=True"
            )
        return resolve_targets(
            model, x, y, target, targeted=self.targeted, mode=self.target_mode, generator=generator,
            counter=counter,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class LpAttack(Attack):
    """An attack inside the ``norm`` ball ('Linf' or 'L2') of radius ``eps`` (and the [0, 1] box):
    the two fields and the ``threat`` they name, checked once."""

    norm: str = "Linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        make_threat(self.norm, self.eps)
        _next_post_init(super())

    @property
    def threat(self) -> ThreatModel:
        return make_threat(self.norm, self.eps)

    def vacuous(self, x: torch.Tensor) -> bool:
        """Whether there is nothing to attack: a ball of radius 0 or an empty batch (see ``unattacked``)."""
        return self.eps == 0 or x.shape[0] == 0


def unattacked(x: torch.Tensor, counter: Counter, **extra: Any) -> AttackResult:
    """The result of an attack that has nothing to do: the clean input, nothing broken."""
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return AttackResult(x_adv=x.clone(), success=success, counters=counter.as_dict(), **extra)


def ranked_targets(logits: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
    """The classes ranked 2nd, 3rd, ... by ``logits`` (``min(n_targets, K - 1)`` of them), one tensor
    of B classes per rank: the targets of APGD-T and FAB-T."""
    order = logits.argsort(dim=1, descending=True)
    return [order[:, r] for r in range(1, min(n_targets, order.shape[1] - 1) + 1)]


Runs = tuple[torch.Tensor, torch.Tensor]


def stacked_or_serial(
    stack: bool, stacked: Callable[[], Runs], serial: Callable[[], Runs], generator: GeneratorLike
) -> Runs:
    """``stacked()`` (every run in one batch) when ``stack`` and it fits in memory, else ``serial()``
    (the runs one by one, from the same draws; see ``stacked_or_none``): an attack's (x_adv, success)."""
    out = stacked_or_none(stacked, generator) if stack else None
    return out if out is not None else serial()


class Run(NamedTuple):
    """One run of ``robust_runs``: its plan and restart, the rows ``sel`` it attacks with their
    generators, the model and judge it attacks, and ``keep``, which of its rows' results count."""

    plan: Any
    restart: int
    sel: torch.Tensor
    generator: GeneratorLike
    model: Callable
    judge: Judge
    keep: torch.Tensor


def robust_runs(
    success: torch.Tensor, plans: list, restarts: int, generator: GeneratorLike, model: Callable,
    judge: Judge, x_adv: torch.Tensor,
) -> Iterator[Run]:  # fmt: skip
    """The one-by-one form of ``restarts`` runs per plan (a target, or None); a plan's restarts stop
    once every sample is broken (``success``, which the caller updates between runs, with ``x_adv``).

    Each run attacks the samples no earlier run broke (``sel``, all of whose results count) with their
    generators; under ``judge.whole_batch`` it attacks every row with every generator, the broken rows
    held at their ``x_adv`` (``Judge.holding``), and only the results of the rows still to do count."""
    for plan in plans:
        for restart in range(restarts):
            todo = ~success
            if not bool(todo.any()):
                break
            if judge.whole_batch:
                held, held_judge = judge.holding(model, success, x_adv)
                every = torch.arange(todo.shape[0], device=todo.device)
                yield Run(plan, restart, every, generator, held, held_judge, todo)
            else:
                sel = todo.nonzero()[:, 0]
                keep = torch.ones(sel.shape[0], dtype=torch.bool, device=sel.device)
                yield Run(plan, restart, sel, subset(generator, todo), model, judge, keep)


class SweepCall(NamedTuple):
    """One call of a ``SweepAttack``: its arguments, and what its runs need besides (``setup``);
    ``metrics``: the per-sample metrics its runs record (the result's ``metrics``)."""

    model: Callable
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    generator: GeneratorLike
    counter: Counter
    judge: Judge
    setup: Any = None
    metrics: dict[str, torch.Tensor] | None = None

    def clean_logits(self) -> torch.Tensor:
        """The logits of the clean inputs (one counted forward pass)."""
        with torch.no_grad():
            return forward(self.model, self.x, self.counter)


@dataclass(frozen=True, kw_only=True)
class SweepAttack(LpAttack):
    """An ``LpAttack`` made of runs, ``restarts`` per plan. A plan is the target of its runs: the
    call's ``target`` (None: untargeted), or with ``targeted`` each class ranked 2nd, 3rd, ... by the
    clean logits (``n_targets`` of them). The runs go one by one, each on the samples no earlier run
    broke (``serial``, see ``robust_runs``), or where ``stack_in_batch`` all in one batch (``stacked``),
    from the same draws; under ``Judge.whole_batch`` always one by one, each on the whole batch.

    Subclasses (APGD, FAB) declare the fields ``restarts``, ``targeted`` and ``n_targets``, and give
    ``serial``, ``stacked`` and ``verdict``; ``plan`` may add what their runs need to the call."""

    def run(
        self, model, x, y, *, target=None, generator: GeneratorLike = None, judge: Judge | None = None
    ) -> AttackResult:
        counter = Counter()
        judge = judge or Judge.of(model)
        if self.vacuous(x):
            return unattacked(x, counter)
        plans, call = self.plan(SweepCall(model, x, y, target, generator, counter, judge, metrics={}))
        runs = [(plan, restart) for plan in plans for restart in range(self.restarts)]
        x_adv, success = stacked_or_serial(
            len(runs) > 1 and stack_in_batch(x) and not judge.whole_batch,
            lambda: self.stacked(call, runs),
            lambda: self.serial(call, plans),
            generator,
        )
        return AttackResult(
            x_adv=x_adv, success=self.verdict(call, x_adv, success), counters=counter.as_dict(),
            metrics=call.metrics,
        )  # fmt: skip

    def plan(self, call: SweepCall) -> tuple[list, SweepCall]:
        """The plans and the call their runs get (here: as it is)."""
        return self.plans(call, call.clean_logits), call

    def plans(self, call: SweepCall, clean: Callable[[], torch.Tensor]) -> list:
        """The call's ``target`` (or None), or with ``targeted`` the ranked classes of ``clean()``."""
        if call.target is not None:
            return [call.target]
        if self.targeted:
            return ranked_targets(clean(), self.n_targets)
        return [None]

    def serial(self, call: SweepCall, plans: list) -> Runs:
        """(x_adv, success) of the runs one by one (see ``robust_runs``)."""
        raise NotImplementedError

    def stacked(self, call: SweepCall, runs: list[tuple[Any, int]]) -> Runs:
        """(x_adv, success) of every (plan, restart) run in one batch of ``len(runs) * B``."""
        raise NotImplementedError

    def verdict(self, call: SweepCall, x_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        """The success reported for ``x_adv``."""
        raise NotImplementedError


def stacked_targets(runs: list[tuple[Any, int]]) -> torch.Tensor | None:
    """The targets of a stacked batch of (plan, restart) runs (None when untargeted)."""
    return None if runs[0][0] is None else torch.cat([tgt for tgt, _ in runs])


Attempt = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class IterativeLpAttack(LpAttack, LossAttack):
    """An ``LpAttack`` ascending a ``LossAttack``'s loss in ``steps`` projected steps of ``step_size`` (None: 2.5 * eps / steps) from a
    random start (``random_start``), repeated ``restarts`` times on the samples still robust."""

    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.steps, "steps")
        positive(self.restarts, "restarts")
        if self.step_size is not None:
            positive(self.step_size, "step_size")

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def restarted(
        self, attempt: Attempt, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        generator: GeneratorLike, *per_sample: torch.Tensor, model: Callable | None = None,
        judge: Judge | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``attempt(x, y, target, generator, *per_sample) -> (x_adv, success)`` on the whole batch (no
        copies), then once per further restart on the samples still robust, with their generators.

        Under ``judge.whole_batch`` a further restart attacks every row, with every generator, the
        broken rows held at their adversarial points: ``attempt(..., model=, judge=)`` gets the model
        and judge to attack (``Judge.holding``), and only the rows still robust take its results."""
        x_adv, success = attempt(x, y, target, generator, *per_sample)
        for _ in range(1, self.restarts):
            todo = ~success
            if not bool(todo.any()):
                break
            if judge is not None and judge.whole_batch:
                held, held_judge = judge.holding(model, success, x_adv)
                adv, ok = attempt(x, y, target, generator, *per_sample, model=held, judge=held_judge)
                x_adv[todo], success[todo] = adv[todo], ok[todo]
                continue
            idx = todo.nonzero()[:, 0]
            ts = target[idx] if target is not None else None
            extra = [t[idx] for t in per_sample]
            adv, ok = attempt(x[idx], y[idx], ts, subset(generator, todo), *extra)
            x_adv[idx] = adv
            success[idx] = ok
        return x_adv, success


def final_result(
    model: Callable,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    counter: Counter,
    **extra,
) -> AttackResult:
    """Judge the final adversarial inputs with one forward pass and package the result."""
    with torch.no_grad():
        logits = forward(model, x_adv, counter)
    return AttackResult(
        x_adv=x_adv.detach(), success=is_success(logits, y, target), logits=logits, counters=counter.as_dict(),
        **extra,
    )  # fmt: skip


def check_fields(
    attack: Attack, *, above_zero: tuple[str, ...] = (), at_least_zero: tuple[str, ...] = ()
) -> None:
    """ConfigError naming the first field of ``attack`` that is not a number > 0 (``above_zero``) or
    >= 0 (``at_least_zero``), checked in that order."""
    for what in above_zero:
        positive(getattr(attack, what), what)
    for what in at_least_zero:
        positive(getattr(attack, what), what, allow_zero=True)
