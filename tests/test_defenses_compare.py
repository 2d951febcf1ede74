"""evaluate.compare: several run summaries become one comparison table."""

from __future__ import annotations

import pytest

from robustkit.errors import ConfigError
from robustkit.evaluation.compare import compare, format_table


def summary(name, clean, attacks, **extra):
    return {
        "model": name,
        "clean_accuracy": clean,
        "n_samples": 100,
        "attacks": [
            {"name": a, "robust_accuracy": v, "robust_accuracy_ci": [v - 0.05, v + 0.05]}
            for a, v in attacks.items()
        ],
        **extra,
    }


def test_rows_columns_best_and_ranking():
    runs = [
        summary("standard", 0.99, {"pgd-2": 0.10, "pgd-8": 0.0}, robust_accuracy=0.0),
        {
            "defense": "pgd-at",
            "clean_accuracy": 0.80,
            "n_samples": 100,
            "attacks": {"pgd-2": 0.70, "pgd-8": 0.45},
            "training_cost": {
                "passes_per_step": {"total": 23.0},
                "relative_passes": 11.5,
                "relative_seconds": 9.0,
            },
        },
        summary("abnn", 0.95, {"pgd-2": 0.30}, capabilities={"batch_dependent": True}),
    ]
    c = compare(runs)
    assert c["attacks"] == ["pgd-2", "pgd-8"]
    assert [r["defense"] for r in c["rows"]] == ["standard", "pgd-at", "abnn"]
    assert c["rows"][1]["worst_case"] == 0.45 and c["rows"][0]["worst_case"] == 0.0
    assert c["rows"][2]["robust"]["pgd-8"] is None
    assert c["best"] == {
        "clean_accuracy": "standard",
        "worst_case": "pgd-at",
        "pgd-2": "pgd-at",
        "pgd-8": "pgd-at",
    }
    assert c["ranking"][0] == "pgd-at"
    assert any("batch-dependent" in n for n in c["notes"]) and any(
        "not evaluated with: pgd-8" in n for n in c["notes"]
    )
    table = format_table(c)
    assert "| pgd-at | 80.0 | 70.0 | 45.0 | 45.0 | 23.0 | 11.5 | 9.0 |" in table
    assert "| abnn | 95.0 | 30.0 | - | 30.0 |" in table


def test_duplicate_names_are_kept_apart_and_bad_input_is_refused():
    c = compare([summary("m", 0.9, {"a": 0.1}), summary("m", 0.8, {"a": 0.2})])
    assert [r["defense"] for r in c["rows"]] == ["m", "m (2)"]
    with pytest.raises(ConfigError, match="non-empty"):
        compare([])
    with pytest.raises(ConfigError, match="clean_accuracy"):
        compare([{"model": "x"}])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        compare([summary("m", 0.9, {"a": 1.5})])
