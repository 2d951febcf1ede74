"""Summary statistics computed from the results store."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .store import BatchRecord, Outcome, Store

FLAT_GAIN = 1e-6
"""|best loss - loss at the start| at or below which an attack's tracked loss counts as flat."""


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def total_counters(batches: list[BatchRecord]) -> dict[str, int]:
    """Counters (forward / backward passes, queries) summed over batches."""
    counters: dict[str, int] = defaultdict(int)
    for b in batches:
        for k, v in b.counters.items():
            counters[k] += int(v)
    return dict(counters)


def view_of(attack: dict[str, Any]) -> str:
    """The view an attack row ran in (``params["view"]``; the white-box view stores none)."""
    return str((attack.get("params") or {}).get("view", "white-box"))


def loss_trace(outcomes: list[Outcome]) -> dict[str, int] | None:
    """Of the still-robust attacked samples whose attack recorded ``loss_gain`` and ``grad_norm`` (APGD,
    PGD, AutoAttack's first stage): how many (``robust``), and on how many the tracked loss stayed flat
    (|gain| <= ``FLAT_GAIN``) although the input gradient was non-zero (``flat``). None when the attack
    recorded neither (the ``flat-loss`` sanity check)."""
    rows = [o.metrics for o in outcomes if o.robust and "loss_gain" in o.metrics and "grad_norm" in o.metrics]
    if not rows and not any("loss_gain" in o.metrics for o in outcomes):
        return None
    flat = sum(1 for m in rows if abs(m["loss_gain"]) <= FLAT_GAIN and m["grad_norm"] > 0)
    return {"robust": len(rows), "flat": flat}


def summarize(store: Store, classes: list[str] | None = None) -> dict[str, Any]:
    """clean / worst-case robust accuracy, per-attack and per-view figures, per-class breakdown and eps
    curves.

    Per view, a sample's robust accuracy is the lowest over the view's attacks (1 / 0, or for a stochastic
    model the fraction of fresh draws classifying it correctly, ``Outcome.score``) and never above its
    clean one; ``robust_accuracy`` is the worst view's mean (``views`` lists every view, ``worst_view``
    names it). A stochastic model also has ``clean_accuracy_every_draw`` and ``robust_accuracy_every_draw``:
    the fraction of samples classified correctly under every draw.
    """
    samples = store.samples()
    n = len(samples)
    label = {s.idx: s.label for s in samples}
    clean = {s.idx: s.score for s in samples}
    stochastic = any(s.accuracy is not None for s in samples)
    by_view: dict[str, dict[int, float]] = {}
    attacks_out = []
    per_class_attack: dict[str, dict[int, int]] = {}
    for a in store.attacks():
        rows = store.outcomes(a["id"])
        robust = {o.idx: o.robust for o in rows}
        score = {o.idx: o.score for o in rows}
        view = by_view.setdefault(view_of(a), dict(clean))
        for i in view:
            view[i] = min(view[i], score.get(i, 0.0))
        attacked = [o for o in rows if o.attacked]
        broken = sum(1 for o in attacked if not o.robust)
        claimed_not_confirmed = sum(1 for o in attacked if o.claimed and o.robust)
        n_robust = sum(robust.values())
        batches = store.batches(a["name"])
        lo, hi = wilson(n_robust, n)
        linfs = [o.linf for o in attacked if o.linf is not None and not o.robust]
        row = {
            "name": a["name"],
            "attack": a["attack"],
            "params": a["params"],
            "eps": a["eps"],
            "norm": a["norm"],
            "kind": a["kind"],
            "robust_accuracy": (sum(score.values()) if stochastic else n_robust) / n if n else 0.0,
            "robust_accuracy_ci": [lo, hi],
            "success_rate": broken / len(attacked) if attacked else 0.0,
            "attacked": len(attacked),
            "complete": len(rows) == n,
            "claimed_not_confirmed": claimed_not_confirmed,
            "mean_linf_of_successes": sum(linfs) / len(linfs) if linfs else None,
            "seconds": sum(b.seconds for b in batches),
            "counters": total_counters(batches),
        }
        training = [b for b in batches if b.first_idx < 0]  # a universal attack's fit (execute._fit)
        if training:
            row["training"] = {"seconds": sum(b.seconds for b in training), **total_counters(training)}
        row["loss_trace"] = loss_trace(attacked)
        if "view" in a["params"]:
            row["view"] = view_of(a)
        if stochastic:
            row["robust_accuracy_every_draw"] = n_robust / n if n else 0.0
        attacks_out.append(row)
        per_class_attack[a["name"]] = {c: 0 for c in set(label.values())}
        for i, r in robust.items():
            if r:
                per_class_attack[a["name"]][label[i]] += 1
    views = [_view_row(name, scores, n, stochastic) for name, scores in by_view.items()]
    worst = min(views, key=lambda v: v["robust_accuracy"], default=None)
    robust_all = by_view[worst["view"]] if worst else clean
    per_class = []
    counts: dict[int, int] = defaultdict(int)
    correct_by_class: dict[int, float] = defaultdict(float)
    robust_by_class: dict[int, float] = defaultdict(float)
    for s in samples:
        counts[s.label] += 1
        correct_by_class[s.label] += s.score
        robust_by_class[s.label] += robust_all[s.idx]
    for y in sorted(counts):
        per_class.append(
            {
                "label": y,
                "name": classes[y] if classes and 0 <= y < len(classes) else str(y),
                "n": counts[y],
                "clean_accuracy": correct_by_class[y] / counts[y],
                "robust_accuracy": robust_by_class[y] / counts[y],
            }
        )
    curves: dict[str, list[dict[str, float]]] = defaultdict(list)
    for a in attacks_out:
        if a["eps"] is not None:
            where = f" [{a['view']}]" if "view" in a else ""
            curves[f"{a['attack']} ({a['norm'] or '-'}){where}"].append(
                {"eps": a["eps"], "robust_accuracy": a["robust_accuracy"]}
            )
    for pts in curves.values():
        pts.sort(key=lambda p: p["eps"])
    n_robust_all = sum(v == 1.0 for v in robust_all.values())
    n_clean = sum(s.correct and s.score == 1.0 for s in samples)
    lo, hi = wilson(n_robust_all, n)
    clo, chi = wilson(n_clean, n)
    out = {
        "n_samples": n,
        "clean_accuracy": sum(clean.values()) / n if n else 0.0,
        "clean_accuracy_ci": [clo, chi],
        "robust_accuracy": sum(robust_all.values()) / n if n else 0.0,
        "robust_accuracy_ci": [lo, hi],
        "attacks": attacks_out,
        "views": views,
        "worst_view": worst["view"] if worst else None,
        "per_class": per_class,
        "curves": dict(curves),
    }
    if stochastic:
        out["clean_accuracy_every_draw"] = n_clean / n if n else 0.0
        out["robust_accuracy_every_draw"] = n_robust_all / n if n else 0.0
    return out


def _view_row(name: str, scores: dict[int, float], n: int, stochastic: bool) -> dict[str, Any]:
    """One view's figures: robust accuracy (the mean over draws for a stochastic model, which also gets
    the fraction of samples robust under every attack of the view and every draw)."""
    every = sum(v == 1.0 for v in scores.values())
    row = {
        "view": name,
        "robust_accuracy": sum(scores.values()) / n if n else 0.0,
        "robust_accuracy_ci": list(wilson(every, n)),
    }
    if stochastic:
        row["robust_accuracy_every_draw"] = every / n if n else 0.0
    return row


def chance_finding(
    clean_accuracy: float, num_classes: int, n: int, normalization: dict[str, Any] | None = None
) -> tuple[str, str, str, str] | None:
    """The ``clean-accuracy-at-chance`` finding (name, status, evidence, advice) when clean accuracy is at
    or below chance (1 / ``num_classes``); None otherwise or without classes or samples."""
    if num_classes < 2 or n < 1 or clean_accuracy > 1 / num_classes:
        return None
    norm = (normalization or {}).get("source")
    evidence = (
        f"clean accuracy {100 * clean_accuracy:.1f}% on {n} samples is at or below chance (1/{num_classes} = "
        f"{100 / num_classes:.1f}%): the model does not classify this data, so its robust accuracy means nothing"
    )
    advice = (
        "Check that the model and the data belong together (the same classes in the same order, the input size), "
        "the weights (the right checkpoint, every layer loaded), and the input normalization (--normalize"
        + (f"; this run: {norm}" if norm else "")
        + ")."
    )
    return "clean-accuracy-at-chance", "warn", evidence, advice
