"""Sanity checks: structured findings that say when a robustness number cannot be trusted.

``run_sanity_checks(model, x, y, context=...)`` runs every check below and returns ``Finding``s
(name, status ``pass`` / ``warn`` / ``fail``, evidence, advice). A check that lacks the data it needs
(for example ``monotone-eps`` without results at several eps) returns no finding. The runner stores
the findings with the results and the report shows them. docs/sanity-checks.md is the user-facing
page; both are generated from ``CHECKS``.

=============================  ===========================================================================
check                          fires when
=============================  ===========================================================================
randomized-outputs             two identical forward passes give different logits (a stochastic model)
probability-outputs            outputs are non-negative and sum to one per sample (softmax, not logits)
gradient-health                input gradients are NaN/infinite, zero (masking), or vanish for CE only
black-box-vs-white-box         Square (score-based) breaks samples the gradient attacks could not
inference-time-optimization    a forward pass under ``torch.no_grad()`` still records an autograd graph
unbounded-eps                  PGD with eps = 1 (the whole image box) leaves accuracy above chance
monotone-eps                   robust accuracy rises with eps for the same attack and norm
batch-dependence               a sample's logits change when its batch companions change (and the batch
                               views were not run)
transfer-vs-white-box          a transfer view leaves lower robust accuracy than the white-box views (overall,
                               or for one attack in the same batch composition)
flat-loss                      the loss an attack tracked stayed flat on still-robust samples with non-zero
                               input gradients (a saturating or clamping output)
=============================  ===========================================================================

``context`` keys (all optional):

- ``summary``: the runner's summary (``attacks`` with ``attack``, ``name``, ``norm``, ``eps``,
  ``params``, ``robust_accuracy``, ``loss_trace``; ``n_samples``), used by the monotone, black-box and
  flat-loss checks.
- ``robust_accuracy``: ``{attack name: {norm: {eps: accuracy}}}``, the same data given directly.
- ``black_box``: names of black-box attacks in that dict (default: registry classes with
  ``black_box = True``, and names starting with ``square``).
- ``square_beat_whitebox``: bool, or ``cascade``: AutoAttack's ``artifacts["cascade"]`` (a list of
  stage entries, or a list of such lists, one per batch).
- ``eot_samples``: EOT passes the evaluation used (randomized models need > 1).
- ``adaptations``: the adapted defense's record (``robustkit.defenses.adaptive.Adapted.record``): which
  capabilities were honored how (EOT draws, views run); the randomized-outputs and batch-dependence
  checks pass when the evaluation already handled what they detect.
- ``summary["views"]``: robust accuracy per view (``view``, ``robust_accuracy``), for the transfer check.
- ``unbounded_accuracy``: accuracy already measured at unbounded eps (skips running PGD).
- ``run_attacks``: False to skip checks that run an attack (default True).
- ``max_samples``: cap on the samples the checks use (default 64).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks.base import ATTACKS
from ..defenses.adaptive import BATCH_VIEWS
from ..functional.losses import margin
from ..models.state import preserved

log = logging.getLogger(__name__)

STATUSES = ("pass", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    """One check's verdict. ``values`` holds the measured numbers (JSON-able)."""

    name: str
    status: str
    evidence: str
    advice: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Finding status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckInfo:
    name: str
    fires_when: str
    means: str
    advice: str


CHECKS: tuple[CheckInfo, ...] = (
    CheckInfo(
        "randomized-outputs",
        "two forward passes of the same batch differ by more than 1e-3 (relative) in the logits",
        "The model is stochastic (noise injection, random transforms, dropout left on). A single forward "
        "pass is one draw, and a gradient from one draw points in a random direction, so attacks without "
        "expectation over the randomness overestimate robustness.",
        "Declare it: as_defense(model, capabilities=Capabilities(stochastic=True)) or --stochastic. robustkit "
        "then puts expectation over 20 draws inside the gradient attacks (eot_samples / --eot-samples; "
        "autoattack runs as its rand version) and judges the deployed random model over fresh draws (--draws). "
        "If the randomness is unintended, put the model in eval mode yourself and check for dropout or noise layers.",
    ),
    CheckInfo(
        "probability-outputs",
        "every output row is non-negative and sums to 1 (within 1e-3)",
        "The model returns probabilities, not logits. Cross-entropy applied to probabilities takes a second "
        "softmax, whose gradients vanish for confident predictions: gradient attacks stall and robustness "
        "is overestimated.",
        "Remove the final softmax so the model returns logits. If you cannot, return log-probabilities "
        "(log of the output), which behave like logits for every attack.",
    ),
    CheckInfo(
        "gradient-health",
        "input gradients are NaN/infinite (fail), exactly zero for the margin loss on some samples (fail "
        "above 10 %, else warn), or zero for cross-entropy only (warn)",
        "Zero or undefined gradients mean gradient masking: a non-differentiable step (quantization, JPEG, "
        "detach), saturated activations or numerical overflow. Gradient attacks then fail for reasons that "
        "have nothing to do with robustness. Cross-entropy alone vanishing means saturated softmax.",
        "Find the non-differentiable step and attack through it with BPDA (robustkit.attacks.bpda.BPDA, "
        "identity or a differentiable surrogate in the backward pass); rely on the DLR/margin-based stages "
        "(apgd-dlr, apgd-t) and on Square, which needs no gradients. NaN gradients: check for log(0), "
        "sqrt(0) or division by zero in the model.",
    ),
    CheckInfo(
        "black-box-vs-white-box",
        "Square, a score-based attack without gradients, breaks samples that the white-box attacks did not "
        "(in the AutoAttack cascade, or a lower robust accuracy at the same norm and eps)",
        "A black-box attack should never beat a white-box one with full gradient access; when it does, the "
        "gradients are misleading (masked, obfuscated or randomized).",
        "Treat the white-box numbers as upper bounds. Look at gradient-health and randomized-outputs, attack "
        "through non-differentiable parts with BPDA, add EOT for randomness, and report the ensemble "
        "(autoattack) result, which already includes Square.",
    ),
    CheckInfo(
        "inference-time-optimization",
        "a forward pass under torch.no_grad() saves tensors for backward (the model runs its own autograd "
        "inside forward)",
        "The model optimizes at inference time (test-time adaptation, input purification, an inner attack). "
        "Differentiating the forward pass does not differentiate that inner optimization, and the defense "
        "may adapt to the batch, so standard attacks can be misleading.",
        "Use adaptive attacks against the whole inference procedure: BPDA through the inner optimization, "
        "EOT over its randomness, and per-sample evaluation (batch size 1) if it adapts to the batch. "
        "Report the inference procedure with the result.",
    ),
    CheckInfo(
        "unbounded-eps",
        "PGD at eps = 1 (L-inf: any image is reachable) leaves accuracy above chance (1/K plus a margin)",
        "With an unbounded budget every classifier can be fooled; accuracy above chance shows the attack, "
        "not the model, is failing: gradient masking or a broken evaluation.",
        "Check gradient-health and randomized-outputs, run Square (gradient-free), use BPDA or EOT as "
        "indicated, and verify that the model takes inputs in [0, 1] with normalization inside it.",
    ),
    CheckInfo(
        "monotone-eps",
        "for one attack and norm, robust accuracy at a larger eps exceeds that at a smaller eps (fail when "
        "by more than 2 samples, warn otherwise)",
        "A larger budget contains every perturbation of a smaller one, so accuracy must not rise; when it "
        "does, the attack is not converging (too few steps, too large or too small a step) or is noisy.",
        "Use more steps or restarts, or APGD (step-size free); run autoattack at each eps.",
    ),
    CheckInfo(
        "batch-dependence",
        "a sample's logits in the full batch differ (beyond 1e-3 relative) from its logits in a different "
        "batch composition (halves of the batch, single samples)",
        "The output depends on the other samples in the batch: BatchNorm in training mode, test-time "
        "adaptation, or batch-level normalization. Attacks and evaluation then depend on batch size and "
        "order, and an attacker may exploit the other samples.",
        "If the defense adapts to its batch by design, declare it (Capabilities(batch_dependent=True) or "
        "--batch-dependent; BatchNorm in train mode is detected): robustkit then attacks the deployed batches "
        "whole, one sample at a time and among clean batch mates, and reports the worst view. If the dependence "
        "is unintended, put the model in eval mode yourself.",
    ),
    CheckInfo(
        "transfer-vs-white-box",
        "a transfer view (the attack takes a source model's gradients, success judged on the defense) leaves "
        "lower robust accuracy than the worst white-box view, or than the same attack's white-box view in the "
        "same batch composition, by more than 2 samples",
        "Gradients borrowed from another model should never beat the defense's own gradients; when they do, "
        "the defense's gradients are masked (obfuscated, shattered or routed through a network the white-box "
        "attack does not see), and the white-box figure overstates its robustness.",
        "Report the worst view, which includes the transfer view, as the robust accuracy (robustkit does). "
        "Find where the white-box gradients go wrong (gradient-health, BPDA through non-differentiable parts, "
        "attack the substitute or the path the defense routes inputs through).",
    ),
    CheckInfo(
        "flat-loss",
        "on at least 10 % (and 2) of the samples an attack left robust, the loss it tracked (APGD, PGD, "
        "AutoAttack's first stage) never rose above its starting value (by more than 1e-6) although the input "
        "gradient was non-zero",
        "The output saturates or is clamped (a tanh or clamped log-probability head, a hard-thresholded "
        "score): gradients flow, through BPDA or a leaky saturation, but the loss does not move, so the "
        "attack's step-size control and best-point selection keep returning to the starting point and the "
        "robust accuracy is overestimated.",
        "Declare the saturating head non-differentiable (Capabilities(non_differentiable=('head',)) with "
        "as_defense): robustkit then attacks the logits before it, so losses, margins and step-size control "
        "see pre-saturation logits while success is judged on the deployed model. Otherwise use a margin "
        "loss on pre-saturation logits.",
    ),
)
_INFO = {c.name: c for c in CHECKS}


def _finding(name: str, status: str, evidence: str, **values: Any) -> Finding:
    advice = "" if status == "pass" else _INFO[name].advice
    return Finding(name, status, evidence, advice, values)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (a.abs().max() + 1e-12))


def _logits(model: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()


# ---------------------------------------------------------------------------------------------- checks


def check_randomized(model, x, y, ctx) -> Finding:
    a, b = _logits(model, x), _logits(model, x)
    rel = _rel(a, b)
    flips = int((a.argmax(1) != b.argmax(1)).sum())
    ctx["_noise"] = rel
    evidence = f"two identical forward passes: max relative logit difference {rel:.2e}, prediction changed on {flips}/{x.shape[0]} samples"
    if rel <= 1e-5:
        return _finding("randomized-outputs", "pass", evidence, relative_difference=rel, flips=flips)
    if rel <= 1e-3:
        return _finding("randomized-outputs", "warn", evidence + " (tiny: nondeterministic kernels?)",
                        relative_difference=rel, flips=flips)  # fmt: skip
    record = ctx.get("adaptations") or {}
    eot = int(ctx.get("eot_samples") or record.get("eot_samples") or _eot_in_summary(ctx))
    if eot > 1:  # the evaluation honored the randomness: EOT inside the attacks (and draws for the verdict)
        draws = int(record.get("draws") or 1)
        how = f"; handled: EOT over {eot} draws inside the gradient attacks" + (
            f", verdict over {draws} fresh draws of the deployed model" if draws > 1 else ""
        )
        return _finding("randomized-outputs", "pass", evidence + how, relative_difference=rel, flips=flips,
                        eot_samples=eot, draws=draws)  # fmt: skip
    return _finding("randomized-outputs", "fail", evidence, relative_difference=rel, flips=flips)


def _eot_in_summary(ctx) -> int:
    best = 1
    for a in (ctx.get("summary") or {}).get("attacks", []):
        params = a.get("params") or {}
        eot = params.get("eot_samples") or (20 if params.get("version") == "rand" else 1)
        best = max(best, int(eot))
    return best


def check_probabilities(model, x, y, ctx) -> Finding:
    out = _logits(model, x)
    sums = out.sum(1)
    probs = bool((out >= 0).all()) and float((sums - 1).abs().max()) <= 1e-3
    evidence = f"output range [{float(out.min()):.3g}, {float(out.max()):.3g}], row sums in [{float(sums.min()):.4g}, {float(sums.max()):.4g}]"
    return _finding("probability-outputs", "fail" if probs else "pass", evidence, probabilities=probs)


def _input_grad(model, x, y, loss: Callable) -> torch.Tensor | None:
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        out = loss(model(leaf).float(), y).sum()
        if not out.requires_grad:
            return None
        (g,) = torch.autograd.grad(out, leaf, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def check_gradients(model, x, y, ctx) -> Finding:
    n = x.shape[0]
    g_ce = _input_grad(model, x, y, lambda z, t: F.cross_entropy(z, t, reduction="none"))
    g_m = _input_grad(model, x, y, lambda z, t: -margin(z, t))
    if g_ce is None or g_m is None:
        return _finding("gradient-health", "fail", "the output does not depend differentiably on the input "
                        "(no autograd graph from input to logits)", zero_fraction=1.0)  # fmt: skip
    bad = (~torch.isfinite(g_ce.flatten(1)).all(1)) | (~torch.isfinite(g_m.flatten(1)).all(1))
    zero_m = g_m.flatten(1).abs().amax(1) == 0
    zero_ce = (g_ce.flatten(1).abs().amax(1) == 0) & ~zero_m
    n_bad, n_zero, n_ce = int(bad.sum()), int(zero_m.sum()), int(zero_ce.sum())
    evidence = (f"input gradients on {n} samples: {n_bad} NaN/inf, {n_zero} zero for the margin loss, "
                f"{n_ce} zero for cross-entropy only")  # fmt: skip
    vals = {"nan": n_bad, "zero_margin": n_zero, "zero_ce_only": n_ce, "n": n}
    if n_bad or n_zero > 0.1 * n:
        return _finding("gradient-health", "fail", evidence, **vals)
    if n_zero or n_ce > 0.1 * n:
        return _finding("gradient-health", "warn", evidence, **vals)
    return _finding("gradient-health", "pass", evidence, **vals)


def check_dynamic(model, x, y, ctx) -> Finding:
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return t

    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    graph = bool(getattr(out, "requires_grad", False))
    evidence = f"a forward pass under torch.no_grad() saved {saved} tensors for backward" + (
        " and returned a tensor attached to an autograd graph" if graph else ""
    )
    status = "fail" if saved or graph else "pass"
    return _finding(
        "inference-time-optimization", status, evidence, saved_tensors=saved, output_requires_grad=graph
    )


def check_unbounded(model, x, y, ctx) -> Finding | None:
    chance = 1.0 / _logits(model, x[:2]).shape[1]
    if ctx.get("unbounded_accuracy") is not None:
        acc, n, how = (
            float(ctx["unbounded_accuracy"]),
            int(ctx.get("n_samples") or x.shape[0]),
            "measured by the runner",
        )
    else:
        if not ctx.get("run_attacks", True):
            return None
        from ..attacks.pgd import PGD

        attack = PGD(norm="Linf", eps=1.0, steps=25, step_size=0.1, random_start=False, loss="cw")
        n, how = x.shape[0], "PGD-25 (margin loss, no random start, step 0.1) at L-inf eps = 1"
        try:
            x_adv = attack(model, x, y).x_adv
        except RuntimeError as exc:  # no autograd path from input to output: the attack cannot move
            log.debug("unbounded-eps: PGD could not differentiate the model: %s", exc)
            x_adv, how = x, how + ", which could not differentiate the model"
        acc = float((_logits(model, x_adv).argmax(1) == y).float().mean())
    limit = chance + max(0.05, 2.0 / max(n, 1))
    evidence = f"accuracy {acc:.1%} at unbounded eps ({how}, {n} samples); chance is {chance:.1%}"
    return _finding("unbounded-eps", "fail" if acc > limit else "pass", evidence, accuracy=acc, chance=chance)


def _curves(ctx) -> tuple[dict[tuple[str, str], dict[float, float]], int]:
    curves: dict[tuple[str, str], dict[float, float]] = {}
    summary = ctx.get("summary") or {}
    n = int(ctx.get("n_samples") or summary.get("n_samples") or 0)
    for a in summary.get("attacks", []):
        if a.get("eps") is None or a.get("robust_accuracy") is None:
            continue
        params = a.get("params") or {}
        key = (str(a.get("attack")), str(a.get("norm")) + "|" + _params_key(params))
        curves.setdefault(key, {})[float(a["eps"])] = float(a["robust_accuracy"])
    for attack, by_norm in (ctx.get("robust_accuracy") or {}).items():
        for norm, by_eps in by_norm.items():
            for eps, acc in by_eps.items():
                curves.setdefault((str(attack), str(norm)), {})[float(eps)] = float(acc)
    return curves, n


def _params_key(params: dict) -> str:
    """Entries that differ in more than eps (e.g. steps) are separate curves."""
    return repr(sorted((k, repr(v)) for k, v in params.items() if k not in ("eps", "name")))


def check_monotone(model, x, y, ctx) -> Finding | None:
    curves, n = _curves(ctx)
    curves = {k: v for k, v in curves.items() if len(v) >= 2}
    if not curves:
        return None
    worst, where = 0.0, ""
    for (attack, norm), pts in curves.items():
        eps = sorted(pts)
        for i, lo in enumerate(eps):
            for hi in eps[i + 1 :]:
                rise = pts[hi] - pts[lo]
                if rise > worst:
                    worst = rise
                    where = f"{attack} ({norm.split('|')[0]}): {pts[lo]:.1%} at eps {lo:.4g} but {pts[hi]:.1%} at eps {hi:.4g}"
    if worst <= 1e-9:
        return _finding("monotone-eps", "pass", f"robust accuracy is non-increasing in eps on {len(curves)} curve(s)",
                        curves=len(curves))  # fmt: skip
    status = "fail" if (n and worst * n > 2 + 1e-6) or (not n and worst > 0.01) else "warn"
    return _finding(
        "monotone-eps", status, "robust accuracy rises with eps: " + where, rise=worst, curves=len(curves)
    )


def _is_black_box(name: str, key: str | None, ctx) -> bool:
    if (
        name in set(ctx.get("black_box") or ())
        or name.startswith("square")
        or (key or "").startswith("square")
    ):
        return True
    if key and key in ATTACKS:
        return bool(getattr(ATTACKS.get(key), "black_box", False))
    return False


def _stages(cascade: Any) -> Iterable[list[dict]]:
    if isinstance(cascade, list) and cascade and isinstance(cascade[0], list):
        yield from cascade
    elif isinstance(cascade, list):
        yield cascade


def check_black_box(model, x, y, ctx) -> Finding | None:
    if ctx.get("square_beat_whitebox") is not None:
        beat = bool(ctx["square_beat_whitebox"])
        evidence = (
            "the evaluation reports that Square "
            + ("beat" if beat else "did not beat")
            + " the white-box attacks"
        )
        return _finding(
            "black-box-vs-white-box", "fail" if beat else "pass", evidence, square_beat_whitebox=beat
        )
    if ctx.get("cascade"):
        broke = 0
        for stages in _stages(ctx["cascade"]):
            white = False  # a black-box stage only counts after some white-box stage
            for st in stages:
                name = str(st.get("attack"))
                if not (st["black_box"] if "black_box" in st else _is_black_box(name, name, ctx)):
                    white = True
                elif white:
                    broke += int(st.get("attacked", 0)) - int(st.get("robust_after", st.get("attacked", 0)))
        evidence = (
            f"in the AutoAttack cascade Square broke {broke} sample(s) that the white-box stages did not"
        )
        return _finding("black-box-vs-white-box", "fail" if broke else "pass", evidence, square_broke=broke)
    curves, n = _curves(ctx)
    per_point: dict[tuple[str, float], dict[str, list[float]]] = {}
    for (attack, norm), pts in curves.items():
        kind = "black" if _is_black_box(attack, attack, ctx) else "white"
        for eps, acc in pts.items():
            per_point.setdefault((norm.split("|")[0], eps), {"black": [], "white": []})[kind].append(acc)
    gaps = [(min(v["white"]) - min(v["black"]), k) for k, v in per_point.items() if v["black"] and v["white"]]
    if not gaps:
        return None
    gap, (norm, eps) = max(gaps)
    tol = 1.0 / n if n else 0.005
    evidence = (f"at {norm} eps {eps:.4g} the best black-box attack leaves {gap:+.1%} less robust accuracy than "
                f"the best white-box attack" if gap > 0 else "no black-box attack beat the white-box attacks")  # fmt: skip
    return _finding("black-box-vs-white-box", "fail" if gap > tol else "pass", evidence, gap=max(gap, 0.0))


def check_batch(model, x, y, ctx) -> Finding | None:
    n = x.shape[0]
    if n < 2:
        return None
    noise = float(ctx.get("_noise", 0.0))
    if noise > 1e-3:
        return None  # indistinguishable from the model's own randomness (see randomized-outputs)
    full = _logits(model, x)
    parts = [_logits(model, x[: n // 2]), _logits(model, x[n // 2 :])]
    diffs = [_rel(full, torch.cat(parts))]
    for i in range(min(n, 4)):
        try:
            diffs.append(_rel(full[i : i + 1], _logits(model, x[i : i + 1])))
        except (RuntimeError, ValueError) as exc:  # e.g. BatchNorm1d in training mode refuses batch size 1
            log.debug("batch-dependence: single-sample forward failed: %s", exc)
            diffs.append(float("inf"))
    worst = max(diffs)
    limit = max(1e-3, 10 * noise)
    evidence = (
        f"max relative logit change when the batch composition changes: {worst:.2e} (threshold {limit:.0e})"
    )
    ran = _batch_views(ctx)
    if worst > limit and ran:
        return _finding("batch-dependence", "pass", evidence + f"; handled: attacked in the batch views {ran}",
                        relative_difference=worst, views=ran)  # fmt: skip
    if worst > limit and (ctx.get("adaptations") or {}).get("capabilities", {}).get("batch_dependent"):
        evidence += "; the model was treated as batch-dependent but no batch view was run"
    return _finding(
        "batch-dependence", "fail" if worst > limit else "pass", evidence, relative_difference=worst
    )


def _batch_views(ctx) -> str:
    """The batch views the evaluation ran, with their robust accuracy ('' when none was run)."""
    views = {v["view"]: v for v in (ctx.get("summary") or {}).get("views", [])}
    ran = [f"{n} {views[n]['robust_accuracy']:.1%}" for n in BATCH_VIEWS if n in views]
    return ", ".join(ran) if len(ran) == len(BATCH_VIEWS) else ""


def _same_attack_gaps(attacks: list[dict[str, Any]]) -> list[tuple[float, str, str, float, float]]:
    """Per suite entry: (gap, entry, transfer view, transfer accuracy, white-box accuracy) where a transfer
    view of the entry leaves less than the white-box view in the same batch composition (``whole-batch``
    for a batch-dependent model, else ``white-box``)."""
    by: dict[str, dict[str, float]] = {}
    for a in attacks:
        view = str(a.get("view") or "white-box")
        by.setdefault(str(a["name"]).split(" [", 1)[0], {})[view] = float(a["robust_accuracy"])
    gaps = []
    for entry, views in by.items():
        white = views.get("whole-batch", views.get("white-box"))
        for view, acc in views.items():
            if view.startswith("transfer:") and white is not None:
                gaps.append((white - acc, entry, view, acc, white))
    return gaps


def check_transfer(model, x, y, ctx) -> Finding | None:
    summary = ctx.get("summary") or {}
    views = summary.get("views") or []
    transfer = [v for v in views if str(v["view"]).startswith("transfer:")]
    white = [v for v in views if not str(v["view"]).startswith("transfer:")]
    if not transfer or not white:
        return None
    n = int(summary.get("n_samples") or 0)
    tol = 2.0 / n if n else 0.02
    best_t = min(transfer, key=lambda v: v["robust_accuracy"])
    worst_w = min(white, key=lambda v: v["robust_accuracy"])
    gap = worst_w["robust_accuracy"] - best_t["robust_accuracy"]
    evidence = (f"{best_t['view']} leaves {best_t['robust_accuracy']:.1%} robust accuracy, the white-box view "
                f"{worst_w['view']} {worst_w['robust_accuracy']:.1%}")  # fmt: skip
    per_attack = max(_same_attack_gaps(summary.get("attacks") or []), default=None)
    if gap > tol + 1e-9:
        status = "fail"
        evidence += ": the transfer attack is stronger, the white-box gradients are masked"
    elif per_attack is not None and per_attack[0] > tol + 1e-9:
        status = "fail"
        g, entry, view, acc, wb = per_attack
        evidence += (f"; but under {entry} the {view} view leaves {acc:.1%} against {wb:.1%} white-box in the same "
                     "batch composition: the white-box gradients are partly masked")  # fmt: skip
    else:
        status = "pass"
        evidence += ": the white-box attack is at least as strong, overall and attack by attack"
    return _finding(
        "transfer-vs-white-box",
        status,
        evidence,
        gap=gap,
        transfer=best_t["view"],
        white_box=worst_w["view"],
        attack_gap=per_attack[0] if per_attack else 0.0,
    )


def check_flat_loss(model, x, y, ctx) -> Finding | None:
    traces = [(str(a.get("name") or a.get("attack")), a["loss_trace"])
              for a in (ctx.get("summary") or {}).get("attacks", []) if a.get("loss_trace")]  # fmt: skip
    if not traces:
        return None
    name, worst = max(traces, key=lambda t: (t[1]["flat"] / max(t[1]["robust"], 1), t[1]["flat"]))
    flat, robust = int(worst["flat"]), int(worst["robust"])
    evidence = (f"{name}: the tracked loss stayed flat (never rose by more than 1e-6 from its start) on {flat} of "
                f"{robust} still-robust samples whose input gradients were non-zero")  # fmt: skip
    status = "fail" if flat >= max(2, 0.1 * robust) else "pass"
    return _finding("flat-loss", status, evidence, attack=name, flat=flat, robust=robust)


_RUNNERS: dict[str, Callable[..., Finding | None]] = {
    "randomized-outputs": check_randomized,
    "probability-outputs": check_probabilities,
    "gradient-health": check_gradients,
    "black-box-vs-white-box": check_black_box,
    "inference-time-optimization": check_dynamic,
    "unbounded-eps": check_unbounded,
    "monotone-eps": check_monotone,
    "batch-dependence": check_batch,
    "transfer-vs-white-box": check_transfer,
    "flat-loss": check_flat_loss,
}


def run_sanity_checks(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    context: dict[str, Any] | None = None,
    checks: Iterable[str] | None = None,
) -> list[Finding]:
    """Run the checks (all by default, in ``CHECKS`` order) on up to ``max_samples`` samples.

    The model's state (modes, buffers, gradients) is restored afterwards. A check that crashes yields
    a ``warn`` finding naming the exception instead of stopping the evaluation.
    """
    ctx = dict(context or {})
    limit = int(ctx.get("max_samples", 64))
    x, y = x[:limit], y[:limit]
    names = list(checks) if checks is not None else [c.name for c in CHECKS]
    findings: list[Finding] = []
    with preserved(model):
        for name in names:
            try:
                found = _RUNNERS[name](model, x, y, ctx)
            except Exception as exc:  # a crashing check must not abort the run; report it instead
                log.warning("sanity check %s crashed: %r", name, exc)
                found = Finding(name, "warn", f"the check could not run: {type(exc).__name__}: {exc}",
                                "Inspect the model on this input; the other checks are unaffected.")  # fmt: skip
            if found is not None:
                findings.append(found)
    return findings


def checks_markdown() -> str:
    """The body of docs/sanity-checks.md: one section per check."""
    parts = []
    for c in CHECKS:
        parts.append(f"## `{c.name}`\n\n**Fires when** {c.fires_when}.\n\n**What it means.** {c.means}\n\n"
                     f"**What to do.** {c.advice}\n")  # fmt: skip
    return "\n".join(parts)
