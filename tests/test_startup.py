"""A light start: the parser, ``--help`` and ``import robustkit`` load no torch; names load on first use.

Nothing here is timed (``benchmarks/startup.py`` measures the time); the tests check what is imported,
that every public name still works, that the registrations of the higher layers (built-in datasets, the
zoo's model source, the ART adapter) happen on the first lookup, and that ``robustkit list`` gives the
same names from its cache as computed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import robustkit
from robustkit import cli, files, registry

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    if cache is not None:
        env["ROBUSTKIT_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


LIGHT = """
import sys
import robustkit.cli
code = 0
try:
    robustkit.cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({"torch", "torchvision", "timm", "kornia", "art", "cv2", "matplotlib", "pytorchvideo"} & set(sys.modules))
rk = sorted(m.split(".")[1] for m in sys.modules if m.startswith("robustkit."))
print(code, heavy, rk)
"""
# what the parser may import: the command itself and the lowest layer (no torch, no backend)
LIGHT_UNITS = {"cli", "errors", "registry", "validate", "files", "version"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["evaluate", "--help"], ["train", "--help"]])
def test_help_and_version_import_no_torch_and_no_backend(argv):
    done = python(LIGHT, *argv)
    assert done.returncode == 0, done.stderr
    code, heavy, units = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert code == "0"
    assert heavy == "[]"
    assert "cli" in units and set(ast.literal_eval(units)) <= LIGHT_UNITS, units


def test_building_the_parser_imports_no_torch():
    done = python(
        "import robustkit.cli, sys; robustkit.cli.build_parser(); import robustkit; "
        "print('torch' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_robustkit_help_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "robustkit", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "evaluate" in done.stdout and "list" in done.stdout


def test_every_public_name_resolves_to_its_defining_object():
    assert set(robustkit.__all__) == {*robustkit._PUBLIC, "__version__"}
    for name, module in robustkit._PUBLIC.items():
        value = getattr(robustkit, name)
        assert value is getattr(sys.modules[f"robustkit.{module}"], name)
    from robustkit.api import evaluate
    from robustkit.attacks import create_attack

    assert robustkit.evaluate is evaluate and robustkit.create_attack is create_attack
    assert set(robustkit.__all__) <= set(dir(robustkit))
    assert robustkit.attacks is sys.modules["robustkit.attacks"]  # subpackages stay attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = robustkit.no_such_name


def test_star_import_gives_every_public_name():
    namespace: dict = {}
    exec("from robustkit import *", namespace)
    assert set(robustkit.__all__) <= set(namespace)


def test_registrations_happen_on_first_lookup_without_touching_the_package():
    """Built-in datasets, the zoo's model source and the ART adapter, with no robustkit.<name> accessed."""
    done = python(
        "import sys\n"
        "from robustkit.data.loading import load_dataset\n"
        "from robustkit.models import loading\n"
        "assert 'robustkit.builtin' not in sys.modules\n"
        "print(len(load_dataset('shapes', n=3)))\n"
        "print(loading.default_model_for('faces'))\n"
        "loading.adapt(object())\n"
        "print([prefix for prefix, _ in loading._ADAPTERS])\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["3", "faces-resnet", "['art.estimators']"]


def test_a_failing_provider_stays_pending_and_loads_once(tmp_path, monkeypatch):
    module = tmp_path / "rk_test_provider.py"
    module.write_text("CALLS = []\ndef register():\n    CALLS.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PROVIDERS", {})
    monkeypatch.setattr(registry, "_PROVIDED", set())
    registry.provide("test group", "rk_test_provider_missing")
    with pytest.raises(ImportError):
        registry.load_providers("test group")
    with pytest.raises(ImportError):  # still pending: the next lookup tries again
        registry.load_providers("test group")
    registry._PROVIDERS["test group"].clear()  # give up on the missing one
    registry.provide("test group", "rk_test_provider:register")
    registry.load_providers("test group")
    registry.load_providers("test group")
    registry.provide("test group", "rk_test_provider:register")  # already loaded: not again
    registry.load_providers("test group")
    import rk_test_provider

    assert rk_test_provider.CALLS == [1]


def test_list_names_from_the_cache_equal_the_computed_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))
    assert cli.main(["list"]) == 0
    computed = capsys.readouterr().out
    cached = json.loads((tmp_path / "catalogue.json").read_text())
    assert cached["stamp"] == cli._catalogue_stamp()
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out == computed
    for line in ("attacks:  ", "suites:   ", "datasets: ", "models:   ", "defenses: "):
        assert line in computed
    assert "shapes-resnet" in computed and "pgd" in computed and "standard" in computed


def test_a_warm_list_imports_no_torch(tmp_path):
    for run in ("cold", "warm"):
        done = python(LIGHT, "list", cache=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("attacks:  ")
        heavy = done.stdout.strip().splitlines()[-1].split(" ", 2)[1]
        assert (heavy == "[]") == (run == "warm"), (run, heavy)


def test_cached_json_reuses_recomputes_and_survives_an_unwritable_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    path = tmp_path / "c.json"
    assert files.cached_json(path, "a", compute) == {"n": 1}
    assert files.cached_json(path, "a", compute) == {"n": 1}
    assert files.cached_json(path, "b", compute) == {"n": 2}  # stale stamp
    path.write_text("{not json")
    assert files.cached_json(path, "b", compute) == {"n": 3}
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert files.cached_json(blocker / "c.json", "a", compute) == {"n": 4}  # parent is a file


def test_files_stamp_changes_when_a_file_is_added_edited_or_removed(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    first = files.files_stamp([a], "0.1.0")
    assert files.files_stamp([a], "0.1.0") == first
    assert files.files_stamp([a], "0.2.0") != first
    b.write_text("")
    assert files.files_stamp([a, b], "0.1.0") != first
    a.write_text("x = 22\n")
    assert files.files_stamp([a], "0.1.0") != first
