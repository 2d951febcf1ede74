"""robustkit: adversarial robustness evaluation for image and video classifiers.

Quick use::

    import robustkit
    result = robustkit.evaluate()                      # built-in model, shapes data, quick suite
    pgd = robustkit.create_attack("pgd", norm="Linf", eps=8/255, steps=10)
    adv = pgd(model, x, y).x_adv
"""

from __future__ import annotations

from .api import evaluate, evaluate_defenses
from .attacks import ATTACKS, Attack, AttackResult, create_attack
from .attacks.criteria import Misclassification, TargetedMisclassification, confirm
from .builtin.zoo import load_zoo_model
from .data.loading import load_dataset
from .errors import ConfigError, InputError, ModelError, RobustkitError, UnsafeCheckpointError
from .evaluation.config import RunConfig
from .evaluation.runner import RunResult
from .evaluation.suite import load_suite
from .models.loading import load_model, register_adapter
from .models.normalized import Normalized
from .models.state import preserved
from .threat import L2, Linf, make_threat
from .version import __version__

# ART estimators passed as models become nn.Modules; robustkit.art (and ART) load on first use.
register_adapter("art.estimators", "robustkit.art:from_estimator")

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "ConfigError",
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
