"""Side-by-side comparison of several defenses: run summaries in, one table structure out.

A run summary is what the runner writes to ``summary.json`` (``clean_accuracy``, ``robust_accuracy``,
``attacks``: a list of ``{name, robust_accuracy, robust_accuracy_ci, ...}``), optionally with the
defense's ``defense`` name, ``capabilities``, measured ``training_cost`` and ``published`` figures.
``attacks`` may also be a mapping ``{attack name: robust accuracy}``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

NAME_KEYS = ("defense", "name", "model", "run")


def _name(run: dict[str, Any], i: int) -> str:
    for key in NAME_KEYS:
        if run.get(key):
            return str(run[key])
    return f"run {i + 1}"


def _attacks(run: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    raw = run.get("attacks") or {}
    out: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        for name, value in raw.items():
            entry = value if isinstance(value, dict) else {"robust_accuracy": value}
            out[str(name)] = entry
    elif isinstance(raw, list):
        for entry in raw:
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"{where}: each entry of 'attacks' needs a 'name' and a 'robust_accuracy'")
            out[str(entry["name"])] = entry
    else:
        raise ConfigError(f"{where}: 'attacks' must be a list or a mapping, got {type(raw).__name__}")
    for name, entry in out.items():
        acc = entry.get("robust_accuracy")
        if acc is not None and (not isinstance(acc, int | float) or not 0 <= acc <= 1):
            raise ConfigError(f"{where}: robust accuracy of '{name}' must be in [0, 1], got {acc!r}")
    return out


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Turn run summaries into ``{attacks, rows, best, ranking, notes}``.

    Each row: ``defense``, ``n_samples``, ``clean_accuracy``, ``robust`` ({attack: accuracy or None when
    that attack was not run}), ``robust_ci``, ``worst_case`` (the run's own worst-case robust accuracy
    over all its attacks, or the minimum over the listed ones), ``capabilities``, ``training_cost``,
    ``published``. ``best`` names the defense with the highest value per column.
    """
    if not isinstance(runs, list) or not runs:
        raise ConfigError("compare: give a non-empty list of run summaries")
    attacks: list[str] = []
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    notes: list[str] = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise ConfigError(f"compare: run {i + 1} is a {type(run).__name__}, not a summary mapping")
        name = _name(run, i)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        where = f"compare: run '{name}'"
        clean = run.get("clean_accuracy")
        if not isinstance(clean, int | float) or not 0 <= clean <= 1:
            raise ConfigError(f"{where}: 'clean_accuracy' must be a number in [0, 1], got {clean!r}")
        per_attack = _attacks(run, where)
        for a in per_attack:
            if a not in attacks:
                attacks.append(a)
        accs = [e["robust_accuracy"] for e in per_attack.values() if e.get("robust_accuracy") is not None]
        worst = run.get("robust_accuracy")
        if worst is None:
            worst = min(accs) if accs else None
        caps = run.get("capabilities") or {}
        if caps.get("batch_dependent"):
            notes.append(
                f"{name} is batch-dependent: its figures hold for the evaluated batch composition only."
            )
        if caps.get("stochastic"):
            notes.append(f"{name} is stochastic: robust accuracy needs EOT; check the EOT curves.")
        rows.append(
            {
                "defense": name,
                "n_samples": run.get("n_samples"),
                "clean_accuracy": float(clean),
                "robust": {a: e.get("robust_accuracy") for a, e in per_attack.items()},
                "robust_ci": {
                    a: e.get("robust_accuracy_ci")
                    for a, e in per_attack.items()
                    if e.get("robust_accuracy_ci")
                },
                "worst_case": worst,
                "capabilities": caps,
                "training_cost": run.get("training_cost"),
                "published": run.get("published"),
            }
        )
    for row in rows:
        missing = [a for a in attacks if a not in row["robust"]]
        for a in missing:
            row["robust"][a] = None
        if missing:
            notes.append(f"{row['defense']} was not evaluated with: {', '.join(missing)}.")
    sizes = {r["n_samples"] for r in rows if r["n_samples"] is not None}
    if len(sizes) > 1:
        notes.append(
            f"runs used different sample counts ({', '.join(str(s) for s in sorted(sizes))}); compare with care."
        )
    best: dict[str, str] = {}
    for column, get in [
        ("clean_accuracy", lambda r: r["clean_accuracy"]),
        ("worst_case", lambda r: r["worst_case"]),
    ] + [(a, lambda r, a=a: r["robust"][a]) for a in attacks]:
        scored = [(get(r), r["defense"]) for r in rows if get(r) is not None]
        if scored:
            best[column] = max(scored, key=lambda t: t[0])[1]
    ranking = [
        r["defense"]
        for r in sorted(rows, key=lambda r: -1 if r["worst_case"] is None else r["worst_case"], reverse=True)
    ]
    return {"attacks": attacks, "rows": rows, "best": best, "ranking": ranking, "notes": notes}


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_table(comparison: dict[str, Any], *, cost: bool = True) -> str:
    """A Markdown table of a comparison (percentages), for logs, notes and the terminal."""
    attacks = comparison["attacks"]
    head = ["defense", "clean", *attacks, "worst"]
    if cost:
        head += ["passes/step", "x std (passes)", "x std (time)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison["rows"]:
        cells = [
            r["defense"],
            _pct(r["clean_accuracy"]),
            *(_pct(r["robust"][a]) for a in attacks),
            _pct(r["worst_case"]),
        ]
        if cost:
            c = r.get("training_cost") or {}
            passes = (c.get("passes_per_step") or {}).get("total")
            cells += [
                "-" if passes is None else f"{passes:.1f}",
                "-" if c.get("relative_passes") is None else f"{c['relative_passes']:.1f}",
                "-" if c.get("relative_seconds") is None else f"{c['relative_seconds']:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
