"""Attack-suite recipes: YAML files that name attacks by registry key, validated before anything runs.

```yaml
name: quick
description: FGSM and PGD at eps in {1, 2, 4, 8}/255, L-inf
attacks:
  - attack: pgd            # registry key
    name: pgd-linf         # optional display name
    eps: [1/255, 8/255]    # a list of eps expands to one entry per value
    steps: 10              # every other key is a constructor field of the attack
```
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .. import schema
from ..attacks import ATTACKS, Attack, create_attack
from ..errors import ConfigError
from ..registry import check_keys, suggest

SUITE_KEYS = ("name", "description", "attacks")
ENTRY_KEYS = ("attack", "name")


@dataclass
class SuiteEntry:
    name: str
    attack_key: str
    params: dict[str, Any]
    attack: Attack

    @property
    def eps(self) -> float | None:
        eps = self.params.get("eps", getattr(self.attack, "eps", None))
        return float(eps) if isinstance(eps, int | float) else None

    @property
    def norm(self) -> str | None:
        return self.params.get("norm", getattr(self.attack, "norm", None))


@dataclass
class Suite:
    name: str
    description: str
    entries: list[SuiteEntry]
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    original: Suite | None = field(default=None, repr=False)  # the recipe before ``with_eps``

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe: every entry with all its constructor fields."""
        return {
            "name": self.name,
            "description": self.description,
            "attacks": [
                {"name": e.name, "attack": e.attack_key, **_jsonable(e.attack.params())} for e in self.entries
            ],
        }


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def parse_number(value: Any, where: str) -> Any:
    """'8/255' -> 0.0313...; numbers pass through; other strings are left alone ('1.2.3/255', a
    fraction gone wrong, is refused naming ``where``)."""
    if isinstance(value, str) and "/" in value and schema.looks_numeric(value):
        return schema.parse_fraction(value, where)
    return value


# Bounds a recipe's common attack fields must keep whichever attack they belong to (their types come
# from the attack's dataclass): (minimum, exclusive)
BOUNDS: dict[str, tuple[float, bool]] = {
    "eps": (0, False),
    "step_size": (0, True),
    "learning_rate": (0, True),
    "steps": (1, False),
    "restarts": (1, False),
    "eot_samples": (1, False),
    "queries": (1, False),
    "n_targets": (1, False),
    "max_iter": (1, False),
}


@functools.cache
def _field_types(key: str) -> dict[str, Any]:
    """The constructor fields of attack ``key`` and their types (empty for an ART attack)."""
    cls = ATTACKS.get(key) if key in ATTACKS else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: the attack checks itself
        return {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_value(key: str, name: str, value: Any, at: str) -> Any:
    """Field ``name`` of attack ``key`` checked against its type and ``BOUNDS`` (``at`` names it); an
    ART attack's (``art.<Class>``) parameters are ART's to check."""
    value = parse_number(value, at)
    if key.startswith("art."):
        return value
    kind = _field_types(key).get(name)
    if kind is not None:
        value = schema.check(value, kind, at)
    if name in BOUNDS and value is not None:
        low, exclusive = BOUNDS[name]
        if kind is int or (isinstance(value, int) and low >= 1):
            return schema.integer(value, at, minimum=int(low))
        return schema.number(value, at, minimum=low, exclusive=exclusive)
    return value


def check_params(key: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    """``params`` of attack ``key`` checked before the attack is built: each bad value is a ConfigError
    naming ``where`` and the field (``<where>.steps must be an integer >= 1, got 2.5``)."""
    return {name: check_value(key, name, value, f"{where}.{name}") for name, value in params.items()}


def _fmt_eps(eps: float) -> str:
    scaled = eps * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:g}"


def builtin_suites() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("robustkit.recipes").iterdir() if p.name.endswith(".yaml")
    )


def find_suite(spec: str) -> Path:
    """A recipe path, or the name of a built-in recipe (``quick``, ``autoattack-standard``, ...)."""
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigError(
                f"--suite {path} is a directory; give a recipe .yaml file (or a built-in suite name)"
            )
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist")
        return path
    candidate = resources.files("robustkit.recipes") / f"{spec}.yaml"
    if not candidate.is_file():
        known = builtin_suites()
        raise ConfigError(
            f"unknown suite '{spec}'{suggest(spec, known)}. Built-in suites: {', '.join(known)}; or give a path to a .yaml file."
        )
    return Path(str(candidate))


def _build(key: str, params: dict[str, Any], where: str) -> Attack:
    try:
        if str(key).startswith("art."):  # ART's own attack class, e.g. art.ProjectedGradientDescent
            from ..art import recipe_attack

            return recipe_attack(key[4:], **params)
        return create_attack(key, **params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid parameters for '{key}': {exc}") from exc


def parse_eps(value: Any, where: str = "eps") -> float:
    """An eps override: '8/255', '0.03' or a number; finite and > 0."""
    return float(schema.number(value, where, minimum=0, exclusive=True))


def with_eps(suite: Suite, eps: float) -> Suite:
    """``suite`` with the eps of every attack that has one replaced by ``eps`` (its name ``<name>@<eps>``,
    e.g. ``pgd@4/255``; a recipe's explicit ``step_size`` scaled by the same ratio). Entries that become
    identical (an eps sweep) are kept once; attacks without an eps (patches) are kept as they are.
    Applied to a suite already overridden, it starts again from the recipe."""
    eps = parse_eps(eps)
    suite = suite.original or suite  # overriding again starts from the recipe
    entries: dict[str, SuiteEntry] = {}
    for entry in suite.entries:
        if "eps" not in entry.params and "eps" not in entry.attack.params():
            entries.setdefault(entry.name, entry)
            continue
        params = {**entry.params, "eps": eps}
        old = entry.eps
        if isinstance(params.get("step_size"), int | float) and old:
            params["step_size"] = params["step_size"] * eps / old
        name = f"{entry.name.partition('@')[0]}@{_fmt_eps(eps)}"
        new = SuiteEntry(
            name, entry.attack_key, params, _build(entry.attack_key, params, f"{suite.source}: {name}")
        )
        same = entries.get(name)
        if same is not None and _jsonable(same.attack.params()) != _jsonable(new.attack.params()):
            raise ConfigError(
                f"eps={_fmt_eps(eps)}: attacks of suite '{suite.name}' become two different '{name}'; give "
                "each entry its own 'name' in the recipe"
            )
        entries.setdefault(name, new)
    return Suite(name=f"{suite.name}@{_fmt_eps(eps)}", description=f"{suite.description} (eps set to "
                 f"{_fmt_eps(eps)})", entries=list(entries.values()), source=suite.source, raw=suite.raw,
                 original=suite)  # fmt: skip


def load_suite(spec: str | dict[str, Any]) -> Suite:
    """Load and validate a recipe (name, path or already-parsed dict). Nothing runs before it is valid."""
    if isinstance(spec, dict):
        raw, source = spec, "<dict>"
    else:
        path = find_suite(spec)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the recipe ({exc}); expected a YAML text file") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a suite must be a mapping with keys {', '.join(SUITE_KEYS)}")
    check_keys(raw, SUITE_KEYS, source)
    for key in ("name", "description"):
        if raw.get(key) is not None:
            schema.check(raw[key], str, f"{source}: {key}")
    items = raw.get("attacks")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: 'attacks' must be a non-empty list of attack entries, got {items!r}")
    entries: list[SuiteEntry] = []
    for i, item in enumerate(items):
        where = f"{source}: attacks[{i}]"
        if not isinstance(item, dict) or "attack" not in item:
            raise ConfigError(f"{where}: each entry needs an 'attack' key naming a registered attack")
        key = item["attack"]
        if not isinstance(key, str) or not key:
            raise schema.fail(f"{where}.attack", "the name of a registered attack (a string, e.g. pgd)", key)
        if key not in ATTACKS and not key.startswith("art."):
            raise ConfigError(
                f"{where}: unknown attack '{key}'{suggest(key, ATTACKS.names())}. Known: {', '.join(ATTACKS.names())}."
            )
        if "name" in item:
            schema.string(item["name"], f"{where}.name")
        params = {k: v for k, v in item.items() if k not in ENTRY_KEYS}
        eps_values = params.pop("eps", None)
        if isinstance(eps_values, list | tuple):
            sweep = schema.items(eps_values, f"{where}.eps (a number or a list of numbers)")
        else:
            sweep = [eps_values]
        params = check_params(key, params, where)
        for j, eps in enumerate(sweep):
            p = dict(params)
            if eps is not None:
                at = f"{where}.eps" + (f"[{j}]" if isinstance(eps_values, list | tuple) else "")
                p["eps"] = check_value(key, "eps", eps, at)
            attack = _build(key, p, where)
            base = item.get("name", key)
            label = f"{base}@{_fmt_eps(p['eps'])}" if "eps" in p and len(sweep) > 1 else str(base)
            if "eps" in p and len(sweep) == 1 and "name" not in item:
                label = f"{key}@{_fmt_eps(p['eps'])}"
            entries.append(SuiteEntry(name=label, attack_key=key, params=p, attack=attack))
    names = [e.name for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(
            f"{source}: attack names must be unique; repeated: {', '.join(sorted(dupes))}. Give each a 'name'."
        )
    name = raw.get("name") or (Path(source).stem if source != "<dict>" else "custom")
    return Suite(
        name=str(name), description=str(raw.get("description", "")), entries=entries, source=source, raw=raw
    )
