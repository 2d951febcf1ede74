"""Adaptive evaluation of a defense: how the evaluator attacks a model as it is deployed.

``adapt(defense)`` returns an :class:`Adapted`: the deployed model, the model gradient attacks
differentiate, the capabilities (declared, or detected from the model), the views to attack it in and
a record of how each capability was honored (stored with the run and shown in the report).

- ``stochastic``: expectation over the model's own draws *inside the gradient attacks only*
  (``eot_samples`` of APGD and PGD, 20 by default; an ``autoattack`` of version standard or plus runs
  as AutoAttack's ``rand`` version: APGD-CE and APGD-DLR with EOT). FAB and Square run once, on one
  draw per query, as AutoAttack's ``rand`` does. The verdict is judged on the deployed random model over
  ``draws`` fresh draws (at least 10): the mean accuracy and the fraction robust under every draw.
- ``batch_dependent`` (declared, or detected: BatchNorm in train mode): attacks run on the deployed
  batch composition (no clean-subset selection, no compaction, no cascade subsets) in three views:
  the whole batch controlled by the attacker, one sample at a time, and the adversarial sample among
  clean batch mates. The defense's robust accuracy is the worst view.
- ``non_differentiable``: the named modules run forward as they are and are differentiated through
  the identity (BPDA, Athalye et al. 2018). A declared module that produces the model's output (a
  saturating or clamping head) is skipped altogether in ``attack_model``: the attack's loss, step-size
  control and best-point selection see the pre-saturation logits; success is judged on ``model``.
- transfer sources (``Defense.sources``; ABNN: its substitute): one more view, attacked with the
  source's gradients and judged on the defense (``Transfer``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks.bpda import BPDA
from ..errors import ConfigError
from ..models.state import preserved
from .base import Capabilities, Defense

WHOLE_BATCH, ONE_AT_A_TIME, AMONG_CLEAN = "whole-batch", "one-at-a-time", "among-clean"
BATCH_VIEWS = (WHOLE_BATCH, ONE_AT_A_TIME, AMONG_CLEAN)
MIN_DRAWS = 10


@dataclass(frozen=True)
class View:
    """One way of attacking the defense. ``batch``: how samples are batched (``whole-batch``: the run's
    batches, every sample attacked together; ``one-at-a-time``: batches of one; ``among-clean``: each
    sample attacked alone while its batch mates stay clean). ``source``: a transfer source (the attack
    takes its gradients, success is judged on the defense)."""

    name: str
    batch: str = WHOLE_BATCH
    source: nn.Module | None = field(default=None, compare=False, repr=False)

    def model(self, model: nn.Module) -> nn.Module:
        """The model the attacks of this view differentiate, given the defense's attack model."""
        return model if self.source is None else Transfer(model, self.source)


@dataclass
class Adapted:
    """A defense as the evaluator attacks it (see the module docstring)."""

    name: str
    model: nn.Module
    attack_model: nn.Module
    capabilities: Capabilities
    detected: list[str]
    eot_samples: int
    draws: int
    views: tuple[View, ...]
    record: dict[str, Any]

    def adapt_attack(self, attack: Any) -> Any:
        """The attack as a stochastic defense needs it: EOT inside the gradient attacks only."""
        if not self.capabilities.stochastic or self.eot_samples <= 1:
            return attack
        fields = {f.name for f in dataclasses.fields(attack)} if dataclasses.is_dataclass(attack) else set()
        if getattr(attack, "name", None) == "autoattack" and isinstance(
            getattr(attack, "version", None), str
        ):
            if attack.version in ("standard", "plus"):
                return attack.replace(version="rand", eot_samples=self.eot_samples)
            return attack.replace(eot_samples=self.eot_samples)
        if "eot_samples" in fields:
            return attack.replace(eot_samples=self.eot_samples)
        return attack


def batch_statistics(model: nn.Module) -> list[str]:
    """Names of the modules that normalize with the statistics of the current batch: BatchNorm in train
    mode, or without running statistics."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            found.append(name or type(m).__name__)
    return found


def random_modules(model: nn.Module) -> list[str]:
    """Names of dropout modules that are active (train mode, p > 0)."""
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def _head(model: nn.Module, names: tuple[str, ...], probe: torch.Tensor | None) -> set[str]:
    """The declared modules whose output is the model's output (found with one probing forward pass)."""
    if probe is None or not names:
        return set()
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: outputs.__setitem__(n, o))
        for n in names
    ]
    try:
        with torch.no_grad():
            out = model(probe)
    finally:
        for h in hooks:
            h.remove()
    return {n for n, o in outputs.items() if isinstance(o, torch.Tensor) and o.shape == out.shape
            and torch.equal(o, out)}  # fmt: skip


def _runs_alone(model: nn.Module, probe: torch.Tensor | None) -> str | None:
    """Why ``model`` cannot classify a batch of one sample (BatchNorm over a single value), or None."""
    if probe is None:
        return None
    with preserved(model), torch.no_grad():
        try:
            model(probe[:1])
        except (ValueError, RuntimeError) as exc:
            return str(exc).splitlines()[0]
    return None


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def check_names(defense: Defense, shown: int = 24) -> None:
    """Every module declared non-differentiable is a real submodule of the defense's model; otherwise a
    ConfigError listing the submodule names, shallowest first."""
    known = sorted((n for n, _ in defense.model.named_modules() if n), key=lambda n: (n.count("."), n))
    wrong = [n for n in defense.capabilities.non_differentiable if n not in known]
    if wrong:
        listed = ", ".join(known[:shown]) + (f" and {len(known) - shown} more" if len(known) > shown else "")
        raise ConfigError(
            f"--bpda / non_differentiable: {', '.join(map(repr, wrong))} is not a submodule of '{defense.name}'; "
            f"its submodules (model.named_modules()) are: {listed or '(none)'}. Wrap an inline "
            "non-differentiable step in an nn.Module to name it"
        )


def adapt(
    defense: Defense, *, eot_samples: int = 20, draws: int = MIN_DRAWS, probe: torch.Tensor | None = None
) -> Adapted:
    """How to attack ``defense`` as deployed. ``probe``: a small input batch (finds a declared
    non-differentiable head). Capabilities the model shows (BatchNorm or dropout in train mode) are
    added to the declared ones and listed in ``detected``."""
    if not isinstance(eot_samples, int) or isinstance(eot_samples, bool) or eot_samples < 1:
        raise ConfigError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < MIN_DRAWS:
        raise ConfigError(f"draws must be an integer >= {MIN_DRAWS}, got {draws!r}")
    check_names(defense)
    caps, model = defense.capabilities, defense.model
    detected: list[str] = []
    bn = batch_statistics(model)
    if bn and not caps.batch_dependent:
        detected.append(f"batch-dependent: BatchNorm uses batch statistics in {', '.join(bn[:4])}"
                        + (f" and {len(bn) - 4} more" if len(bn) > 4 else ""))  # fmt: skip
    drop = random_modules(model)
    if drop and not caps.stochastic:
        detected.append(f"stochastic: dropout is active in {', '.join(drop[:4])}")
    caps = dataclasses.replace(
        caps, batch_dependent=caps.batch_dependent or bool(bn), stochastic=caps.stochastic or bool(drop)
    )
    how: list[str] = []
    attack_model = model
    if caps.non_differentiable:
        heads = _head(model, caps.non_differentiable, probe)
        deployed = copy.deepcopy(model)
        surrogate = copy.deepcopy(model)
        for name in caps.non_differentiable:
            _replace(deployed, name, BPDA(deployed.get_submodule(name)))
            _replace(surrogate, name, nn.Identity() if name in heads else BPDA(surrogate.get_submodule(name)))
        model, attack_model = deployed, surrogate if heads else deployed
        how.append(f"BPDA (identity backward) through {', '.join(caps.non_differentiable)}")
        if heads:
            how.append(f"{', '.join(sorted(heads))} produces the output: the attacks' loss, step-size control and "
                       "best-point selection use the logits before it; success is judged on the deployed model")  # fmt: skip
    if caps.stochastic:
        how.append(f"EOT inside the gradient attacks ({eot_samples} draws per step; autoattack runs as its 'rand' "
                   f"version); verdict on the deployed random model over {draws} fresh draws")  # fmt: skip
    views = [View("white-box")]
    if caps.batch_dependent:
        views = [
            View(WHOLE_BATCH, WHOLE_BATCH),
            View(ONE_AT_A_TIME, ONE_AT_A_TIME),
            View(AMONG_CLEAN, AMONG_CLEAN),
        ]
        alone = _runs_alone(model, probe)
        if alone is not None:
            views.pop(1)
            how.append(f"no one-at-a-time view: the model cannot run on a single sample ({alone})")
        how.append("batch-dependent: attacked on the deployed batch composition (no subsets, no compaction) in "
                   f"the views {', '.join(v.name for v in views)}; the robust accuracy is the worst view")  # fmt: skip
    for src_name, src in defense.sources.items():
        views.append(View(f"transfer:{src_name}", WHOLE_BATCH, src))
        how.append(f"transfer view: gradients from {src_name}, success judged on the defense")
    if not how:
        how.append("no special handling needed: deterministic, batch-independent, differentiable")
    if detected:
        how.extend(f"detected {d}" for d in detected)
    record = {
        "name": defense.name,
        "capabilities": caps.as_dict(),
        "declared": defense.capabilities.as_dict(),
        "detected": detected,
        "how_honored": how,
        "eot_samples": eot_samples if caps.stochastic else 1,
        "draws": draws if caps.stochastic else 1,
        "views": [v.name for v in views],
        "info": _plain(defense.info),
    }
    return Adapted(
        name=defense.name,
        model=model,
        attack_model=attack_model,
        capabilities=caps,
        detected=detected,
        eot_samples=eot_samples if caps.stochastic else 1,
        draws=draws if caps.stochastic else 1,
        views=tuple(views),
        record=record,
    )


class Transfer(nn.Module):
    """Transfer attack as a model: the value is the defended model's logits, the gradient is the
    source model's (``defended(x) + source(x) - source(x).detach()``). Success is always judged on the
    defended model; the attack only borrows the source's gradients."""

    def __init__(self, defended: nn.Module, source: nn.Module) -> None:
        super().__init__()
        self.defended = defended
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.defended(x)
        src = self.source(x)
        return out + (src - src.detach())


class AmongClean(nn.Module):
    """The adversarial sample among clean batch mates: ``forward(x)`` evaluates each row of ``x`` in a
    batch with ``mates`` (the other samples of its deployed batch, clean) and returns its logits."""

    def __init__(self, model: nn.Module, mates: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.mates = mates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.model(torch.cat([x[i : i + 1], self.mates.to(x.dtype)]))[:1] for i in range(x.shape[0])]
        return torch.cat(rows)


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(info, default=str))
