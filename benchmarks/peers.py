"""robustkit against ART and torchattacks on the same model, data, batch, budget and threat model.

- ``pgd_vs_peers``: robustkit ``PGD`` vs ART ``ProjectedGradientDescent`` vs torchattacks ``PGD``:
  L-inf, ``eps``, ``steps`` iterations of step ``2.5 eps / steps``, one random start, the whole set as
  one batch. robustkit's row is its public call (compaction on: samples already adversarial leave the
  working batch); a second row runs the same loop without compaction, to separate the per-step cost
  from the work compaction saves; a third runs the public call behind the fast path
  (``--fold-bn --channels-last --amp bf16``, ``common.fast_copy``), whose examples are judged in fp32 like all.
- ``ensemble_vs_torchattacks``: robustkit ``autoattack`` (version standard) vs torchattacks
  ``AutoAttack(version="standard")`` (APGD-CE, APGD-T, FAB-T, Square with the same budgets: see
  the function's docstring).

Every library gets the model as a user hands it over (eval mode, parameters requiring grad).
Robust accuracy is one fp32 eval forward pass on the returned examples (``common.robust_accuracy``),
the same for all; perturbations beyond ``eps`` (1e-5 tolerance) are reported. torchattacks is
optional: its rows are skipped with a note when it is not installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import FAST, compare, fast_copy, judged, ratio, robust_accuracy, thawed
from robustkit.functional.random import sample_generators

FAST_ROW = "robustkit fast path (" + ", ".join(f"{k}={v}" for k, v in FAST.items()) + ")"


def has_torchattacks() -> bool:
    return importlib.util.find_spec("torchattacks") is not None


def _art_pgd(model: nn.Module, x: torch.Tensor, eps: float, steps: int, k: int):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=k,
        clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu",
    )  # fmt: skip
    return ProjectedGradientDescent(
        clf, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps, num_random_init=1,
        batch_size=x.shape[0], verbose=False,
    )  # fmt: skip


def _check(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> dict[str, Any]:
    d = (x_adv - x).flatten(1).abs().amax(1)
    return {"max_linf": float(d.max()), "outside_ball": int((d > eps + 1e-5).sum())}


def pgd_vs_peers(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 10, reps: int = 3
) -> dict[str, Any]:
    """Time per call (median over interleaved rounds) and robust accuracy of the three PGDs."""
    from robustkit.attacks import pgd as rk
    from robustkit.models.state import preserved

    with torch.no_grad():
        k = int(model(x[:2]).shape[1])
    thawed(model)
    attack = rk.PGD(eps=eps, steps=steps)
    gens = lambda: sample_generators(0, range(len(x)))  # noqa: E731
    out: dict[str, torch.Tensor] = {}

    def robustkit_pgd() -> None:
        out["robustkit"] = attack(model, x, y, generator=gens()).x_adv

    def robustkit_plain() -> None:  # the same loop, compaction off: every sample does every step
        threat = attack.threat
        with preserved(model):
            adv, _ = rk.gradient_ascent(
                model, x, y, threat, steps=steps, step_size=2.5 * eps / steps, objective=attack.objective(y, None),
                target=None, start=threat.init(x, gens()).add_(x), counter=rk.Counter(),
            )  # fmt: skip
        out["robustkit (no compaction)"] = adv

    fast = fast_copy(model)

    def robustkit_fast() -> None:
        out[FAST_ROW] = attack(fast.fast, x, y, generator=gens(), **judged(fast)).x_adv

    art = _art_pgd(model, x, eps, steps, k)
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def art_pgd() -> None:
        out["ART"] = torch.from_numpy(art.generate(x_np, y_np)).to(x.device)

    fns = {
        "robustkit": robustkit_pgd,
        "robustkit (no compaction)": robustkit_plain,
        FAST_ROW: robustkit_fast,
        "ART": art_pgd,
    }
    notes = []
    if has_torchattacks():
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

        def ta_pgd() -> None:
            out["torchattacks"] = ta(x, y)

        fns["torchattacks"] = ta_pgd
    else:
        notes.append("torchattacks not installed: its row is skipped (pip install --no-deps torchattacks)")
    t = compare(fns, device=x.device, reps=reps, warmup=1)
    rows = []
    for name in fns:
        thawed(model)
        rows.append(
            {
                "library": name,
                **t[name].as_dict(),
                "time_ratio_vs_robustkit": ratio(t, name, "robustkit"),
                "time_ratio_vs_fast_path": ratio(t, name, FAST_ROW),
                "robust_accuracy": robust_accuracy(model, out[name], y),
                **_check(out[name], x, eps),
            }
        )
    return {"eps": eps, "steps": steps, "n": len(x), "rows": rows, "notes": notes}


def ensemble_vs_torchattacks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, k: int, steps: int = 10, reps: int = 1
) -> dict[str, Any]:
    """robustkit's standard ensemble vs torchattacks' AutoAttack(version="standard").

    torchattacks' standard version runs APGD, APGD-T and FAB-T with their default ``steps=10`` (the
    original AutoAttack uses 100) and Square with 5000 queries; robustkit's ensemble gets the same
    budget through its ``steps`` field (``steps``), so both do the same work per sample.
    """
    from robustkit.attacks.autoattack import AutoAttack

    if not has_torchattacks():
        return {"skipped": "torchattacks not installed (pip install --no-deps torchattacks)"}
    import torchattacks

    thawed(model)
    ours = AutoAttack(eps=eps, version="standard", steps=steps)
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=k, seed=0)
    out: dict[str, Any] = {}

    fast = fast_copy(model)

    def robustkit_aa() -> None:
        res = ours(model, x, y, generator=sample_generators(0, range(len(x))))
        out["robustkit"], out["cascade"] = res.x_adv, res.artifacts.get("cascade")

    def robustkit_fast() -> None:
        res = ours(fast.fast, x, y, generator=sample_generators(0, range(len(x))), **judged(fast))
        out[FAST_ROW], out["cascade_fast"] = res.x_adv, res.artifacts.get("cascade")

    def ta_aa() -> None:
        out["torchattacks"] = theirs(x, y)

    fns = {"robustkit": robustkit_aa, FAST_ROW: robustkit_fast, "torchattacks": ta_aa}
    t = compare(fns, device=x.device, reps=reps, warmup=0)
    rows = []
    for name in fns:
        thawed(model)
        rows.append(
            {
                "library": name,
                **t[name].as_dict(),
                "time_ratio_vs_torchattacks": ratio(t, name, "torchattacks"),
                "robust_accuracy": robust_accuracy(model, out[name], y),
                **_check(out[name], x, eps),
            }
        )
    return {
        "eps": eps,
        "n": len(x),
        "steps": steps,
        "rows": rows,
        "cascade": out.get("cascade"),
        "cascade_fast": out.get("cascade_fast"),
    }
