"""Typed errors. Every user-facing mistake is a ``ValueError`` subclass, every environment fault (a file
that cannot be read or written) a :class:`StorageError`; the CLI maps them all to exit code 2."""

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


class StorageError(RobustkitError, OSError):
    """A file robustkit reads or writes is corrupt, in the way, read-only, or the disk is full. The
    message names the file and what to do."""
