"""Attacks, one per module, each registered by name in ``ATTACKS``.

Every module in this package is imported on first lookup, so a new attack file registers itself
without editing this one.
"""

from __future__ import annotations

from typing import Any

from .base import ATTACKS, Attack, AttackResult, register

__all__ = ["ATTACKS", "Attack", "AttackResult", "create_attack", "register"]


def create_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack from the same keys a recipe uses, e.g. ``create_attack("pgd", eps=8/255)``."""
    return ATTACKS.create(name, **params)
