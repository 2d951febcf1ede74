"""The file tree is the architecture: imports point one way, no cycles, every module importable by path.

The import graph is read from the AST of every module under ``robustkit/``, imports inside functions
included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "robustkit"

# Low to high. A module may import its own top-level package or any lower layer, never a higher one;
# two different top-level packages or modules in one layer may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("registry", "validate", "schema", "device", "files", "version"),
    ("functional",),
    ("threat",),
    ("eot",),
    ("models",),
    ("data",),
    ("attacks",),
    ("training",),
    ("builtin",),
    ("defenses",),
    ("art",),
    ("evaluation",),
    ("report",),
    ("api",),
    ("__init__",),
    ("cli",),
    ("__main__",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.with_suffix("").relative_to(ROOT.parent).parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the robustkit modules it imports (resolved to the longest existing module name)."""
    modules = module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # ``from pkg import mod`` depends on the submodule; ``from mod import name`` on the module
                subs = [f"{module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules] or [module]
                targets += [module] if any(t not in modules for t in subs) else []
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name and target.startswith("robustkit"):
                    graph[name].add(target)
    return graph


def unit(module: str) -> str:
    """The top-level unit of a module: ``robustkit.attacks.pgd`` -> ``attacks``; the package -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    missing = sorted({unit(m) for m in module_names()} - set(LAYER))
    assert not missing, f"add these to LAYERS in {__file__}: {missing}"


def test_imports_point_down():
    wrong = []
    for source, targets in import_graph().items():
        for target in targets:
            a, b = unit(source), unit(target)
            if a == b:
                continue
            if LAYER[b] >= LAYER[a]:
                wrong.append(f"{source} -> {target} ({a} is layer {LAYER[a]}, {b} is layer {LAYER[b]})")
    assert not wrong, "imports pointing up or sideways:\n" + "\n".join(sorted(wrong))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports_by_its_path(name):
    """``import robustkit.<package>.<module> as m`` gives the module, not something that shadows it."""
    namespace: dict = {}
    exec(f"import {name} as m", namespace)
    assert namespace["m"] is sys.modules[name]
    assert importlib.import_module(name) is sys.modules[name]


def test_every_package_is_installed():
    """A package missing from pyproject's list works in an editable install and breaks ``pip install .``."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("__init__.py")}
    assert packages - listed == set()
