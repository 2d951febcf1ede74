"""One ART ``EvasionAttack`` class per registered robustkit attack, generated from the registry.

Classes are built on first use from the attack's dataclass, so attacks registered later (by new
modules or user code) get one too. A class is named after its dataclass (``PGD``, ``APGDCE``,
``Patch``) when that name is unique, else after its key (``apgd-ce`` -> ``ApgdCe``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

from ..attacks import ATTACKS
from ..errors import ConfigError
from ..registry import suggest
from .evasion import EXTRAS, RobustkitEvasionAttack, attack_fields
from .patch import RobustkitPatchAttack

log = logging.getLogger(__name__)

_CLASSES: dict[str, type[RobustkitEvasionAttack]] = {}
# attribute names of ART's attack classes that a parameter must not shadow
_RESERVED = {
    "estimator",
    "summary_writer",
    "estimator_requirements",
    "attack_params",
    "generate",
    "set_params",
}


def _camel(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.replace("_", "-").split("-") if part)


def class_names() -> dict[str, str]:
    """ART class name -> robustkit registry key, for every registered attack."""
    keys = ATTACKS.names()
    factories = {k: ATTACKS.get(k) for k in keys}
    counts = Counter(f.__name__ for f in factories.values() if isinstance(f, type))
    out: dict[str, str] = {}
    for key, factory in factories.items():
        name = (
            factory.__name__ if isinstance(factory, type) and counts[factory.__name__] == 1 else _camel(key)
        )
        if name in out:
            name = _camel(key)
        out[name] = key
    return out


def is_patch_style(factory: Any) -> bool:
    """Attacks that train a universal patch: a ``fit`` method and a ``patch`` field."""
    names = {f.name for f in dataclasses.fields(factory)} if dataclasses.is_dataclass(factory) else set()
    return "patch" in names and callable(getattr(factory, "fit", None))


def attack_class(key: str) -> type[RobustkitEvasionAttack]:
    """The ART attack class running robustkit's attack ``key`` (e.g. ``'pgd'``, ``'apgd-ce'``, ``'patch'``)."""
    if key in _CLASSES:
        return _CLASSES[key]
    factory = ATTACKS.get(key)  # ConfigError with "did you mean" for unknown keys
    if not dataclasses.is_dataclass(factory):
        raise ConfigError(f"attack '{key}' is not an attack dataclass; it has no ART class")
    fields = {}
    for name, default in attack_fields(factory).items():
        if name in _RESERVED:
            log.warning(
                "attack '%s': parameter '%s' clashes with ART's Attack API and is not exposed", key, name
            )
            continue
        fields[name] = default
    params = list(RobustkitEvasionAttack.attack_params) + list(fields)
    params += [k for k in EXTRAS if k not in fields]
    base = RobustkitPatchAttack if is_patch_style(factory) else RobustkitEvasionAttack
    name = _name_for(key, factory)
    doc = (factory.__doc__ or "").strip()
    cls = type(
        name,
        (base,),
        {
            "key": key,
            "fields": fields,
            "attack_params": params,
            "__module__": "robustkit.art",
            "__qualname__": name,
            "__doc__": f"robustkit's ``{key}`` attack as an ART evasion attack.\n\n{doc}\n\n"
            f"Parameters (ART ``attack_params``): {', '.join(params)}.",
        },
    )
    _CLASSES[key] = cls
    return cls


def _name_for(key: str, factory: Any) -> str:
    for name, k in class_names().items():
        if k == key:
            return name
    return factory.__name__ if isinstance(factory, type) else _camel(key)


def attack(name: str, estimator: Any, **params: Any) -> RobustkitEvasionAttack:
    """``robustkit.art.attack("pgd", classifier, eps=8/255, steps=10)``: an ART attack running robustkit's
    attack of that registry key (or generated class name), with recipe parameter names."""
    if name not in ATTACKS:
        names = class_names()
        if name in names:
            name = names[name]
        else:
            choices = ATTACKS.names() + list(names)
            raise ConfigError(
                f"unknown attack '{name}'{suggest(name, choices)}. Known: {', '.join(ATTACKS.names())}."
            )
    return attack_class(name)(estimator, **params)


def by_class_name(name: str) -> type[RobustkitEvasionAttack]:
    names = class_names()
    if name not in names:
        raise AttributeError(name)
    return attack_class(names[name])
