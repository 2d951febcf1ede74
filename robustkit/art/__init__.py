"""The ART-compatible surface of robustkit; the only place numpy arrays meet robustkit's tensors.

Three directions:

- robustkit attacks in ART pipelines: ``attack("pgd", classifier, eps=8/255)`` or the generated
  classes (``robustkit.art.PGD``, ``robustkit.art.APGDCE``, ``robustkit.art.Patch``, one per
  registered attack) are ``art.attacks.EvasionAttack`` objects with ``generate`` / ``set_params``.
- ART attacks on robustkit models and defenses: ``to_estimator(model_or_defense)`` is a
  ``PyTorchClassifier``; in recipes, ``attack: art.ProjectedGradientDescent`` runs ART's attack.
- ART estimators in robustkit: ``from_estimator(classifier)`` is an ``nn.Module`` on robustkit input,
  and ``robustkit.evaluate(model=classifier)`` accepts the estimator directly.
"""

from __future__ import annotations

from typing import Any

from ..models.loading import register_adapter
from .boundary import LAYOUTS
from .estimator import EstimatorModel, RobustkitModel, from_estimator, is_art_estimator, to_estimator
from .evasion import RobustkitEvasionAttack
from .factory import attack, attack_class, by_class_name, class_names
from .patch import RobustkitPatchAttack
from .recipe import ARTAttack, art_attack_names, recipe_attack

__all__ = [
    "LAYOUTS",
    "ARTAttack",
    "EstimatorModel",
    "RobustkitEvasionAttack",
    "RobustkitModel",
    "RobustkitPatchAttack",
    "art_attack_names",
    "attack",
    "attack_class",
    "class_names",
    "from_estimator",
    "is_art_estimator",
    "recipe_attack",
    "to_estimator",
]

register_adapter("art.estimators", from_estimator)  # robustkit.evaluate(model=classifier)


def __getattr__(name: str) -> Any:
    """The generated attack classes (``PGD``, ``APGDCE``, ...), built on first access."""
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return by_class_name(name)
    except AttributeError:
        raise AttributeError(f"module 'robustkit.art' has no attribute '{name}'") from None


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(class_names()))
