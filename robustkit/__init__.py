"""robustkit: adversarial robustness evaluation for image and video classifiers.

Quick use::

    import robustkit
    result = robustkit.evaluate()                      # built-in model, shapes data, quick suite
    pgd = robustkit.create_attack("pgd", norm="Linf", eps=8/255, steps=10)
    adv = pgd(model, x, y).x_adv

``import robustkit`` is light (no torch): each public name, and each subpackage (``robustkit.attacks``,
...), is imported on first access (PEP 562). The built-in datasets, the zoo's model source and the ART
adapter are registered on the first lookup that needs them (``registry.provide`` below).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .registry import provide
from .version import __version__

# public name -> the module defining it
_PUBLIC = {
    "ATTACKS": "attacks",
    "Attack": "attacks",
    "AttackResult": "attacks",
    "Capabilities": "defenses.base",
    "ConfigError": "errors",
    "Defense": "defenses.base",
    "InputError": "errors",
    "L2": "threat",
    "Linf": "threat",
    "Misclassification": "attacks.criteria",
    "ModelError": "errors",
    "Normalized": "models.normalized",
    "RobustkitError": "errors",
    "RunConfig": "evaluation.config",
    "RunResult": "evaluation.runner",
    "TargetedMisclassification": "attacks.criteria",
    "UnsafeCheckpointError": "errors",
    "as_defense": "defenses.base",
    "confirm": "attacks.criteria",
    "create_attack": "attacks",
    "evaluate": "api",
    "evaluate_defenses": "api",
    "load_dataset": "data.loading",
    "load_model": "models.loading",
    "load_suite": "evaluation.suite",
    "load_zoo_model": "builtin.zoo",
    "make_threat": "threat",
    "preserved": "models.state",
}

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Capabilities",
    "ConfigError",
    "Defense",
    "InputError",
    "L2",
    "Linf",
    "Misclassification",
    "ModelError",
    "Normalized",
    "RobustkitError",
    "RunConfig",
    "RunResult",
    "TargetedMisclassification",
    "UnsafeCheckpointError",
    "__version__",
    "as_defense",
    "confirm",
    "create_attack",
    "evaluate",
    "evaluate_defenses",
    "load_dataset",
    "load_model",
    "load_suite",
    "load_zoo_model",
    "make_threat",
    "preserved",
]


def _register_art_adapter() -> None:
    """ART estimators passed as models become nn.Modules; robustkit.art (and ART) load on first use."""
    from .models.loading import register_adapter

    register_adapter("art.estimators", "robustkit.art:from_estimator")


# The built-in datasets register themselves and the zoo's model source when ``robustkit.builtin`` loads.
provide("built-in dataset", "robustkit.builtin")
provide("model source", "robustkit.builtin")
provide("model adapter", "robustkit:_register_art_adapter")


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a subpackage: robustkit.attacks, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` imports on first use
    from .api import evaluate, evaluate_defenses
    from .attacks import ATTACKS, Attack, AttackResult, create_attack
    from .attacks.criteria import Misclassification, TargetedMisclassification, confirm
    from .builtin.zoo import load_zoo_model
    from .data.loading import load_dataset
    from .errors import ConfigError, InputError, ModelError, RobustkitError, UnsafeCheckpointError
    from .evaluation.config import RunConfig
    from .evaluation.runner import RunResult
    from .evaluation.suite import load_suite
    from .models.loading import load_model
    from .models.normalized import Normalized
    from .models.state import preserved
    from .threat import L2, Linf, make_threat
