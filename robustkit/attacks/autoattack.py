"""The AutoAttack-grade ensemble (Croce & Hein 2020): a cascade of complementary attacks.

Versions (``version``):

============  =====================================================================================
standard      apgd-ce (100 steps) -> apgd-t (DLR-targeted, 9 targets or K-1) -> fab-t (9 targets)
              -> square (5000 queries)
plus          apgd-ce (5 restarts) -> apgd-dlr (5 restarts) -> fab (5 restarts) -> square
              (5 restarts) -> apgd-t -> fab-t
rand          apgd-ce and apgd-dlr with EOT over 20 passes (``eot_samples``), for randomized models
custom        ``attacks``: a list of registry keys or dicts ``{attack: key, name: label, **fields}``
              (``version`` may also be that list directly)
============  =====================================================================================

Every stage runs only on the samples still robust, always starting from the clean input; a sample's
verdict is the AND over stages. A stage's claimed successes are re-checked by
``robustkit.attacks.criteria.confirm``, as the runner does: an independent fp32 forward pass in the
mode the model was given (autocast off, the fp32 reference model behind a bf16 fast path) and a bound
check with tolerance ``tolerance``; claims that fail stay robust and count as ``rejected``.

For a batch-dependent model (``Judge.whole_batch``: ``Precisions(batch_dependent=True)``) every stage
runs on the whole batch instead, with every sample's generator; the samples already broken are held at
their confirmed adversarial example (``Judge.holding``: the model sees them there and they get no
gradient), only the results of the samples still robust are taken, and the re-check runs on the whole
batch as it would be deployed (broken samples at their examples, the others at their claimed examples
or clean). A final re-check of the returned batch gives ``success``: a sample broken by a stage that its
batch mates' later examples made robust again counts as robust (``broken_by`` -1), and a sample that the
others' examples made misclassified counts as broken (``broken_by`` -3). Every stage gets the call's
criterion and precisions: behind the fast path a stage runs at the precision it declares and reports
the fp32 verdict on its examples (``robustkit.attacks.base.Judge``), so a success too thin for bf16 to
be sure of is still claimed.

The fields ``steps``, ``n_targets``, ``queries``, ``restarts`` and ``eot_samples``, when set, are
passed to every stage that has a field of that name: they override a version's presets (e.g.
``version: rand, eot_samples: 50``), while in a custom list a stage's own setting wins.

Result: ``success`` is True where some stage broke the sample (or it was misclassified already);
``x_adv`` is the confirmed adversarial example there and the clean input elsewhere.
Per-sample metric ``broken_by``: index of the stage that broke the sample, -1 when robust, -2 when
already misclassified on the clean input (-3: see batch-dependent models above); ``loss_gain`` and ``grad_norm`` of the first stage that records
them (APGD-CE: the ``flat-loss`` sanity check), NaN where it did not attack. ``artifacts["cascade"]``: one entry per stage,
``{attack, black_box, attacked, robust_after, rejected, total, seconds, counters}`` (counts within
this batch).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..functional.random import GeneratorLike, subset
from ..registry import dataclass_fields, suggest
from .base import ATTACKS, Attack, AttackResult, Counter, Judge, positive, register
from .criteria import confirm
from .loop import where_batch
from .lp import LpAttack

VERSIONS: dict[str, list[dict[str, Any]]] = {
    "standard": [
        {"attack": "apgd-ce"},
        {"attack": "apgd-t"},
        {"attack": "fab-t"},
        {"attack": "square"},
    ],
    "plus": [
        {"attack": "apgd-ce", "restarts": 5},
        {"attack": "apgd-dlr", "restarts": 5},
        {"attack": "fab", "restarts": 5},
        {"attack": "square", "restarts": 5},
        {"attack": "apgd-t"},
        {"attack": "fab-t"},
    ],
    "rand": [
        {"attack": "apgd-ce", "eot_samples": 20},
        {"attack": "apgd-dlr", "eot_samples": 20},
    ],
}
_SHARED = ("steps", "n_targets", "queries", "restarts", "eot_samples")


@dataclass(frozen=True, kw_only=True)
class AutoAttack(LpAttack):
    """The ensemble. ``version``: 'standard', 'plus', 'rand', 'custom' (with ``attacks``) or a list."""

    name: ClassVar[str] = "autoattack"
    input_kind: ClassVar[str] = "image"

    version: str | list = "standard"
    attacks: list | None = None
    steps: int | None = None
    n_targets: int | None = None
    queries: int | None = None
    restarts: int | None = None
    eot_samples: int | None = None
    tolerance: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.tolerance, "autoattack: tolerance", allow_zero=True)
        for what in _SHARED:
            value = getattr(self, what)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"autoattack: {what} must be an integer >= 1, got {value!r}")
        self.stages()  # fail at construction on a bad stage list

    def _specs(self) -> list[dict[str, Any]]:
        if isinstance(self.version, list | tuple):
            if self.attacks is not None:
                raise ConfigError("autoattack: give the stage list either as version or as attacks, not both")
            return list(self.version)
        if self.version == "custom":
            if not self.attacks:
                raise ConfigError(
                    "autoattack: version 'custom' needs attacks: a list of registry keys or dicts"
                )
            return list(self.attacks)
        if self.version not in VERSIONS:
            choices = [*VERSIONS, "custom"]
            raise ConfigError(
                f"autoattack: unknown version '{self.version}'{suggest(str(self.version), choices)}; "
                f"use one of {', '.join(choices)} or a list of attacks"
            )
        if self.attacks is not None:
            raise ConfigError(f"autoattack: attacks is only used with version 'custom', not '{self.version}'")
        return [dict(spec) for spec in VERSIONS[self.version]]

    def stages(self) -> list[tuple[str, Attack]]:
        """The (display name, attack) pairs of the cascade, in order."""
        out = []
        preset = not isinstance(self.version, list | tuple) and self.version in VERSIONS
        for i, spec in enumerate(self._specs()):
            spec = {"attack": spec} if isinstance(spec, str) else dict(spec)
            if not isinstance(spec.get("attack"), str):
                raise ConfigError(
                    f"autoattack: stage {i} must be a registry key or a dict with 'attack', got {spec!r}"
                )
            key = spec.pop("attack")
            label = spec.pop("name", key)
            factory = ATTACKS.get(key)
            fields = dataclass_fields(factory) if dataclasses.is_dataclass(factory) else []
            if key == "autoattack" or "norm" not in fields or "eps" not in fields:
                raise ConfigError(f"autoattack: stage '{key}' is not an Lp attack with norm and eps fields")
            for what in _SHARED:
                if getattr(self, what) is not None and what in fields and (preset or what not in spec):
                    spec[what] = getattr(self, what)
            spec.setdefault("norm", self.norm)
            spec.setdefault("eps", self.eps)
            out.append((label, ATTACKS.create(key, **spec)))
        return out

    def run(
        self, model, x, y, *, target=None, generator: GeneratorLike = None, judge: Judge | None = None
    ) -> AttackResult:
        if target is not None:
            raise ConfigError("autoattack is untargeted; run apgd-t or fab-t directly for a given target")
        judge = judge or Judge.of(model)
        reference = judge.precisions.reference
        counter = Counter()
        threat = self.threat
        n = x.shape[0]
        robust = ~confirm(reference, None, x, x, y, counter=counter).adversarial
        broken_by = torch.where(robust, -1, -2).to(torch.int64)
        x_adv = x.clone()
        cascade: list[dict[str, Any]] = []
        traces: dict[str, torch.Tensor] = {}
        # under EOT (a stochastic model) a sample no stage confirmed keeps the first EOT stage's point: the
        # verdict over fresh draws counts every draw it fools, as AutoAttack's rand version keeps its iterates
        fallback: torch.Tensor | None = None
        for k, (label, attack) in enumerate(self.stages()):
            start = time.perf_counter()
            todo = int(robust.sum())
            entry: dict[str, Any] = {
                "attack": label,
                "black_box": bool(getattr(attack, "black_box", False)),
                "attacked": todo,
                "total": n,
                "rejected": 0,
                "counters": {},
            }
            if todo and judge.whole_batch:
                held, held_judge = judge.holding(model, ~robust, x_adv)
                res = attack(
                    held,
                    x,
                    y,
                    criterion=judge.criterion,
                    precisions=held_judge.precisions,
                    generator=generator,
                )
                sel = robust.nonzero()[:, 0]  # the rows this stage attacks (its metrics are read there)
                claimed = robust & (res.success | judge.precisions.surrogate)
                check = confirm(reference, threat, x, where_batch(claimed, res.x_adv, x_adv), y,
                                tolerance=self.tolerance, counter=counter)  # fmt: skip
                hit = (claimed & check.confirmed).nonzero()[:, 0]
                x_adv[hit] = res.x_adv[hit]
                entry["rejected"] = int((claimed & ~check.confirmed).sum())
            elif todo:
                sel = robust.nonzero()[:, 0]
                res = attack(
                    model, x[sel], y[sel], criterion=judge.criterion, precisions=judge.precisions,
                    generator=subset(generator, robust),
                )  # fmt: skip
                check = confirm(reference, threat, x[sel], res.x_adv, y[sel], tolerance=self.tolerance,
                                counter=counter)  # fmt: skip
                # behind a surrogate (a skipped saturating head) a stage's claims come from the deployed model
                # only where it decides them (not Square's): every confirmed example counts
                confirmed = (res.success | judge.precisions.surrogate) & check.confirmed
                hit = sel[confirmed]
                x_adv[hit] = res.x_adv[confirmed]
                entry["rejected"] = int((res.success & ~confirmed).sum())
            if todo and fallback is None and getattr(attack, "eot_samples", 1) > 1:
                fallback = x_adv.clone()
                fallback[sel] = res.x_adv if res.x_adv.shape[0] == sel.numel() else res.x_adv[sel]
            if todo:
                robust[hit] = False
                broken_by[hit] = k
                entry["counters"] = dict(res.counters)
                if not traces and {"loss_gain", "grad_norm"} <= res.metrics.keys():
                    for key in ("loss_gain", "grad_norm"):
                        traces[key] = torch.full((n,), float("nan"), device=x.device)
                        value = res.metrics[key].float()
                        traces[key][sel] = value[sel] if value.shape[0] == n and judge.whole_batch else value
                for name, value in res.counters.items():
                    setattr(counter, name, getattr(counter, name, 0) + value)
            entry["robust_after"] = int(robust.sum())
            entry["seconds"] = round(time.perf_counter() - start, 4)
            cascade.append(entry)
        if fallback is not None:
            x_adv = where_batch(robust, fallback, x_adv)
        if judge.whole_batch:  # the verdict on the batch as returned
            broken = confirm(
                reference, threat, x, x_adv, y, tolerance=self.tolerance, counter=counter
            ).confirmed
            broken_by = torch.where(broken & robust, -3, torch.where(robust | broken, broken_by, -1))
            robust = ~broken
        return AttackResult(
            x_adv=x_adv,
            success=~robust,
            counters=counter.as_dict(),
            artifacts={"cascade": cascade},
            metrics={"broken_by": broken_by, **traces},
        )


register("autoattack")(AutoAttack)
