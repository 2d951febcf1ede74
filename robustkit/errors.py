"""Typed errors. Every user-facing mistake is a ``ValueError`` subclass; the CLI maps them to exit code 2."""

from __future__ import annotations


class RobustkitError(Exception):
    """Base class of every error robustkit raises on purpose."""


class ConfigError(RobustkitError, ValueError):
    """A recipe, option or parameter is wrong (unknown key, bad type, out of range)."""


class InputError(RobustkitError, ValueError):
    """A tensor, file or dataset handed to robustkit breaks the data contract."""


class ModelError(RobustkitError, ValueError):
    """A model misbehaves: wrong output shape, NaN logits, unloadable checkpoint."""


class UnsafeCheckpointError(ModelError):
    """A checkpoint would execute code when loaded (a pickle carrying objects)."""


class RunExistsError(RobustkitError, ValueError):
    """The run directory already holds a different run."""
