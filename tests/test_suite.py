"""Recipe loading and validation."""

from __future__ import annotations

import pytest

from robustkit.errors import ConfigError
from robustkit.evaluation.suite import builtin_suites, load_suite, parse_number


def test_quick_suite_expands_eps():
    s = load_suite("quick")
    assert [e.name for e in s.entries][:4] == ["fgsm@1/255", "fgsm@2/255", "fgsm@4/255", "fgsm@8/255"]
    assert [e.attack_key for e in s.entries].count("pgd") == 4
    assert s.entries[-1].eps == pytest.approx(8 / 255)
    assert s.resolved()["attacks"][-1]["steps"] == 10
    assert "quick" in builtin_suites()


def test_fraction_parsing():
    assert parse_number("8/255", "x") == pytest.approx(8 / 255)
    assert parse_number(" 0.5 / 2 ", "x") == 0.25
    assert parse_number("Linf", "x") == "Linf"
    with pytest.raises(ConfigError, match="division by zero"):
        parse_number("1/0", "x")


@pytest.mark.parametrize(
    "recipe,match",
    [
        ({"attacks": [{"attack": "pgdd"}]}, "did you mean 'pgd'"),
        ({"attacks": [{"attack": "pgd", "stpes": 3}]}, "did you mean 'steps'"),
        ({"attacks": [{"attack": "pgd", "eps": -0.1}]}, "eps must be"),
        ({"attacks": [{"attack": "pgd", "steps": 0}]}, "steps must be"),
        ({"attacks": [{"attack": "pgd", "norm": "L3"}]}, "unknown norm"),
        ({"atacks": []}, "did you mean 'attacks'"),
        ({"attacks": []}, "non-empty list"),
        ({"attacks": [{"attack": "pgd"}, {"attack": "pgd"}]}, "unique"),
        ({"attacks": [{"eps": 1}]}, "needs an 'attack' key"),
    ],
)
def test_validation_errors(recipe, match):
    with pytest.raises(ConfigError, match=match):
        load_suite(recipe)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attacks:\n  - attack: pgd\n   eps: [1/255\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_suite(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="did you mean 'quick'"):
        load_suite("quik")
