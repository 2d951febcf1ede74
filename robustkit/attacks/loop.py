"""The one ascent loop of the gradient attacks: compose -> objective -> update -> keep.

Every iterative white-box attack here optimizes a parameter (the adversarial input itself for PGD, a
clip perturbation, one RGB offset per frame, a border, the pixels of a rectangle, an eyeglass texture,
a sticker) that ``compose`` turns into the adversarial input. Each step of :func:`ascend`

1. composes the input from the parameter (``view`` may turn it into the rows the model sees, e.g.
   ``n_samples`` EOT draws of it),
2. evaluates the per-sample ``objective`` of the logits, less optional penalties of the parameter and
   the input (``regularize``), and its gradient with respect to the parameter only (one forward + backward),
3. lets the :class:`Keep` strategy record what to return (the first or last successful input, the one
   of the highest loss, or freeze successful samples in place) and decide to stop,
4. calls ``update(param, grad, step)``, which takes the step and projects (in place or not).

The keep strategies are below; PGD's in-place, compacting form is :class:`Freeze` with
:func:`gradient_ascent`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..functional.projection import batch_view
from ..threat import ThreatModel
from .base import Counter, Judge, forward, is_success
from .expectation import averaged

Compose = Callable[[torch.Tensor], torch.Tensor]
Objective = Callable[[torch.Tensor], torch.Tensor]
Update = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
Regularize = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Succeeded = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def where_batch(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two batches of the same shape."""
    return torch.where(batch_view(mask, a), a, b)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class Ascent:
    """One ascent problem: the pieces :func:`ascend` calls every step (see the module docstring).

    ``objective`` maps the logits of the model's rows to one gain per sample; ``regularize(gain, param,
    x_adv)``, when given, is what the gradient ascends instead (the gain minus penalties on the parameter
    or the input); keep strategies see the bare gain. ``eot_samples`` > 1: gain, logits and gradient are
    the means over that many passes of a stochastic model (EOT, ``robustkit.attacks.expectation``)."""

    objective: Objective
    update: Update
    compose: Compose = _identity
    view: Compose | None = None
    regularize: Regularize | None = None
    eot_samples: int = 1

    def evaluate(
        self, model: Callable, param: torch.Tensor, counter: Counter
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_adv, gain, logits, grad)`` at ``param``: one counted forward and backward pass (one per
        EOT draw)."""
        if self.eot_samples > 1:
            once, seen = dataclasses.replace(self, eot_samples=1), []

            def one_pass() -> tuple[torch.Tensor, ...]:
                x_adv, *rest = once.evaluate(model, param, counter)
                seen[:] = [x_adv]
                return tuple(rest)

            gain, logits, grad = averaged(one_pass, self.eot_samples)
            return seen[0], gain, logits, grad
        with torch.enable_grad():
            leaf = param.detach().requires_grad_(True)
            x_adv = self.compose(leaf)
            logits = forward(model, x_adv if self.view is None else self.view(x_adv), counter)
            gain = self.objective(logits)
            total = gain if self.regularize is None else self.regularize(gain, leaf, x_adv)
            (grad,) = torch.autograd.grad(total.sum(), leaf)
        counter.backward += 1
        return x_adv.detach(), gain.detach(), logits.detach(), grad

    def value(self, model: Callable, param: torch.Tensor, counter: Counter) -> tuple[torch.Tensor, ...]:
        """``(x_adv, gain, logits)`` at ``param`` without gradients: one counted forward pass."""
        with torch.no_grad():
            x_adv = self.compose(param)
            logits = forward(model, x_adv if self.view is None else self.view(x_adv), counter)
            return x_adv, self.objective(logits), logits


class Keep:
    """What an ascent returns, chosen per sample as it runs; subclasses implement the hooks."""

    def observe(
        self, step: int, param: torch.Tensor, x_adv: torch.Tensor, gain: torch.Tensor, logits: torch.Tensor
    ) -> bool:
        """Record step ``step`` (before its update); True stops the ascent here."""
        raise NotImplementedError

    def settle(self, step: int, param: torch.Tensor) -> torch.Tensor | None:
        """After the update of ``step``: the parameter to go on with, or None to stop."""
        return param

    def result(self, param: torch.Tensor, stopped: bool) -> Any:
        """The outcome, from the last parameter (``stopped``: the ascent ended early)."""
        raise NotImplementedError


def ascend(
    model: Callable,
    param: torch.Tensor,
    ascent: Ascent | Callable[[int], Ascent],
    keep: Keep,
    *,
    steps: int,
    counter: Counter,
) -> Any:
    """Run ``steps`` steps of ``ascent`` from ``param``; returns ``keep.result(...)``. A function of the
    step in place of ``ascent`` gives each step its own (a universal attack's minibatch)."""
    for i in range(steps):
        step = ascent if isinstance(ascent, Ascent) else ascent(i)
        x_adv, gain, logits, grad = step.evaluate(model, param, counter)
        if keep.observe(i, param, x_adv, gain, logits):
            return keep.result(param, stopped=True)
        del x_adv, logits
        param = step.update(param, grad, i)
        del grad
        settled = keep.settle(i, param)
        if settled is None:
            return keep.result(param, stopped=True)
        param = settled
    return keep.result(param, stopped=False)


class KeepSuccess(Keep):
    """Per sample the first (``last=False``) or the last successful input, else the final one.

    ``succeeded(logits, y, target)`` judges success; with ``final_check`` the final input is judged by
    one more forward pass of ``ascent`` (else only the inputs of the steps count); ``early_stop`` stops
    once every sample succeeded; ``freeze`` (a per-sample parameter, a batch-dependent model) holds a
    sample's parameter where it first succeeded. ``result`` is ``(x_adv, success, param)``."""

    def __init__(
        self, model: Callable, ascent: Ascent, y: torch.Tensor, target: torch.Tensor | None, counter: Counter,
        *, last: bool = False, succeeded: Succeeded = is_success, final_check: bool = True,
        early_stop: bool = False, freeze: bool = False,
    ) -> None:  # fmt: skip
        self.model, self.ascent, self.y, self.target, self.counter = model, ascent, y, target, counter
        self.last, self.succeeded = last, succeeded
        self.final_check, self.early_stop = final_check, early_stop
        self.freeze, self.frozen = freeze, None  # frozen: the parameter where each sample first succeeded
        self.found = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        self.best: torch.Tensor | None = None

    def _take(self, hit: torch.Tensor) -> torch.Tensor:
        return hit if self.last else hit & ~self.found

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        hit = self.succeeded(logits, self.y, self.target)
        take = self._take(hit)
        self.best = x_adv if self.best is None else where_batch(take, x_adv, self.best)
        if self.freeze:
            first = hit & ~self.found
            self.frozen = (
                param.detach().clone() if self.frozen is None else where_batch(first, param, self.frozen)
            )
        self.found = self.found | hit
        return self.early_stop and bool(self.found.all())

    def settle(self, step: int, param: torch.Tensor) -> torch.Tensor | None:
        return param if self.frozen is None else where_batch(self.found, self.frozen, param)

    def result(self, param: torch.Tensor, stopped: bool):
        if stopped:
            return self.best.detach(), self.found, param.detach()
        if not self.final_check:
            x_adv = self.ascent.compose(param).detach()
            best = x_adv if self.best is None else where_batch(self.found, self.best, x_adv)
            return best, self.found, param.detach()
        x_adv, _, logits = self.ascent.value(self.model, param, self.counter)
        hit = self.succeeded(logits, self.y, self.target)
        take = self._take(hit) | ~(self.found | hit)
        best = x_adv if self.best is None else where_batch(take, x_adv, self.best)
        return best.detach(), self.found | hit, param.detach()


class KeepBest(Keep):
    """Per sample the parameter (``of='param'``) or input (``of='input'``) of the highest gain seen,
    starting from ``initial``; with ``final_check`` the final parameter competes too (one more forward
    pass). ``stop(step, param)``, when given, may end the ascent early: the current parameter is then
    the result. ``result`` is the kept tensor."""

    def __init__(
        self, initial: torch.Tensor, *, of: str = "param", final: Callable[[torch.Tensor], torch.Tensor] | None = None,
        stop: Callable[[int, torch.Tensor], bool] | None = None,
    ) -> None:  # fmt: skip
        self.best, self.of, self.final, self.stop = initial, of, final, stop
        self.best_gain = torch.full((initial.shape[0],), -float("inf"), device=initial.device)

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        better = gain > self.best_gain
        self.best = where_batch(better, param if self.of == "param" else x_adv, self.best)
        self.best_gain = torch.where(better, gain, self.best_gain)
        if self.stop is not None and self.stop(step, param):
            self.best = param
            return True
        return False

    def result(self, param: torch.Tensor, stopped: bool) -> torch.Tensor:
        if stopped or self.final is None:
            return self.best
        return where_batch(self.final(param) > self.best_gain, param, self.best)


class Final(Keep):
    """The final parameter, after every step (universal patches and frames: no per-sample choice)."""

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        return False

    def result(self, param: torch.Tensor, stopped: bool) -> torch.Tensor:
        return param


class KeepLast(Final):
    """The final parameter; tracks which samples succeeded (``found``, e.g. for an update that stops
    changing them) and stops once all did."""

    def __init__(self, y: torch.Tensor, target: torch.Tensor | None) -> None:
        self.y, self.target = y, target
        self.found = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        self.found = self.found | is_success(logits, self.y, self.target)
        return bool(self.found.all())


class Freeze(Keep):
    """PGD's strategy: the parameter is the adversarial input itself, one buffer updated in place; a
    sample is frozen (its step scaled by 0) from the step it first succeeds, so the buffer ends up
    holding the result without a copy of the best iterate.

    Compaction: after 2, 4, 8, ... steps (never after the last) it counts the samples done, one host
    synchronization per check, stops when all are done, and drops the done ones from the working batch
    once they are a quarter of it (``objective_at(live)`` gives the objective of the samples left).
    Under ``judge.whole_batch`` (a batch-dependent model) the done samples stay in the batch, frozen.

    ``judge`` (default: the exact criterion on ``model``) decides success. Behind a bf16 fast path its
    criterion has a margin (``judge.tentative``): a sample is frozen only once it is adversarial by a
    margin bf16 rounding cannot fake, and the final verdict is an fp32 forward pass.
    ``result`` is ``(x_adv, success)``; ``trace()`` the per-sample ``loss_gain`` (best loss over the steps
    less the loss at the start) and ``grad_norm`` (L2 norm of the input gradient at the start).
    """

    def __init__(
        self, model: Callable, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        threat: ThreatModel, *, steps: int, step_size: float, objective: Objective, counter: Counter,
        objective_at: Callable[[torch.Tensor], Objective] | None = None, mask: torch.Tensor | None = None,
        judge: Judge | None = None, eot_samples: int = 1,
    ) -> None:  # fmt: skip
        self.model, self.threat, self.counter = model, threat, counter
        self.steps, self.step_size = steps, step_size
        self.x, self.y, self.target, self.mask, self.objective_at = x, y, target, mask, objective_at
        self.y_all, self.target_all = y, target  # the working batch shrinks when it compacts
        self.judge = judge or Judge.of(model)
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.out: torch.Tensor | None = None
        self.out_found, self.live = self.found, None  # live: working-batch indices once compacted
        self.ascent = Ascent(objective=objective, update=self._update, eot_samples=eot_samples)
        self.loss_start = self.loss_best = self.grad_norm = None  # per sample, of the whole batch

    def _update(self, x_adv: torch.Tensor, grad: torch.Tensor, step: int) -> torch.Tensor:
        if self.mask is not None:
            grad.mul_(self.mask)
        if step == 0:  # before the step: it works in the memory of the gradient
            self.grad_norm = grad.flatten(1).norm(dim=1)
        self.threat.step_(x_adv, self.x, grad, self.step_size, self.found)
        return x_adv

    def observe(self, step, param, x_adv, gain, logits) -> bool:
        if self.out is None:
            self.out, self.loss_start, self.loss_best = param, gain.clone(), gain.clone()
        rows = slice(None) if self.live is None else self.live
        self.loss_best[rows] = torch.maximum(self.loss_best[rows], gain)
        self.found |= self.judge.decide(x_adv, logits, self.y, self.target, self.counter)
        return False

    def settle(self, step: int, param: torch.Tensor) -> torch.Tensor | None:
        i, found = step, self.found
        if self.objective_at is None or i == 0 or i >= self.steps - 1 or (i + 1) & i:
            return param
        n_done = int(found.sum())  # the only host synchronizations of the loop: log2(steps) checks
        if n_done == found.numel():
            return None
        if 4 * n_done < found.numel() or self.judge.whole_batch:
            return param
        if self.live is None:
            self.out_found, self.live = found.clone(), torch.arange(found.numel(), device=found.device)
        else:
            self.out[self.live[found]], self.out_found[self.live[found]] = param[found], True
        keep = ~found
        self.live, self.x, self.y, self.found = self.live[keep], self.x[keep], self.y[keep], found[keep]
        self.target = self.target[keep] if self.target is not None else None
        if self.mask is not None and self.mask.shape[0] == keep.shape[0]:
            self.mask = self.mask[keep]
        self.ascent.objective = self.objective_at(self.live)
        return param[keep]

    def result(self, param: torch.Tensor, stopped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not stopped and not self.judge.tentative:  # the last iterate of the samples still running
            with torch.no_grad():
                self.found |= is_success(forward(self.model, param, self.counter), self.y, self.target)
        if self.live is None:
            adv, success = param.detach(), self.found
        else:
            self.out[self.live], self.out_found[self.live] = param, self.found
            adv, success = self.out.detach(), self.out_found
        if self.judge.tentative:  # behind a bf16 fast path: the verdict on every result in fp32
            success = self.judge.verdict(adv, self.y_all, self.target_all, self.counter)
        return adv, success

    def trace(self) -> dict[str, torch.Tensor]:
        """Per sample: ``loss_gain`` (the best loss seen less the loss at the start: about 0 where the
        loss stays flat) and ``grad_norm`` (the input gradient's norm at the start)."""
        if self.loss_start is None or self.grad_norm is None:
            return {}
        return {"loss_gain": self.loss_best - self.loss_start, "grad_norm": self.grad_norm}


def gradient_ascent(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    objective: Objective,
    target: torch.Tensor | None,
    start: torch.Tensor,
    counter: Counter,
    objective_at: Callable[[torch.Tensor], Objective] | None = None,
    mask: torch.Tensor | None = None,
    judge: Judge | None = None,
    eot_samples: int = 1,
    trace: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PGD ascent (:class:`Freeze`). Returns (x_adv, success): per sample the first successful
    iterate, else the last one.

    ``start`` is the starting point; it is projected onto the threat set around ``x`` in place and
    becomes the loop's state (the caller hands over a tensor of its own, e.g. ``x + init``). Beside one
    bare forward+backward the loop holds that buffer and nothing else the size of the input: the step
    and the projection bounds are computed in the memory of the gradient.

    ``mask`` (broadcastable to ``x``, per sample; e.g. the frames a video attack may change) zeroes
    the gradient outside it, so the iterate never moves there: where ``start`` equals ``x`` those
    entries stay bit-identical to ``x``.

    ``eot_samples`` > 1 ascends the mean over that many passes (EOT, see ``Ascent``); ``trace``, when
    given, receives ``Freeze.trace()`` (per-sample ``loss_gain`` and ``grad_norm``).
    """
    keep = Freeze(
        model, x, y, target, threat, steps=steps, step_size=step_size, objective=objective, counter=counter,
        objective_at=objective_at, mask=mask, judge=judge, eot_samples=eot_samples,
    )  # fmt: skip
    out = ascend(model, threat.project_(start, x), keep.ascent, keep, steps=steps, counter=counter)
    if trace is not None:
        trace.update(keep.trace())
    return out


def until_success(
    model: Callable,
    param: torch.Tensor,
    ascent: Ascent,
    y: torch.Tensor,
    target: torch.Tensor | None,
    counter: Counter,
    *,
    steps: int,
    **keep: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ascend` keeping per sample the first successful input (:class:`KeepSuccess`, whose
    options ``keep`` passes on); returns ``(x_adv, success, param)``."""
    return ascend(model, param, ascent, KeepSuccess(model, ascent, y, target, counter, **keep), steps=steps,
                  counter=counter)  # fmt: skip


def minibatches(
    n: int, batch_size: int, generator: torch.Generator | None, device: torch.device | str
) -> Iterator[torch.Tensor]:
    """Endless minibatch indices into ``n`` training samples (universal attacks): every epoch a new
    order from ``generator``, drawn when the epoch starts; full batches only, except that an epoch
    always yields at least one (all ``n`` when ``batch_size > n``)."""
    while True:
        where = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=where).to(device)
        for pos in range(0, max(n - batch_size, 0) + 1, batch_size):
            yield order[pos : pos + batch_size]
