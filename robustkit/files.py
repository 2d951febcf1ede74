"""Run directories and atomic writes: nothing half-written, nothing outside the run directory."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def safe_name(name: str) -> str:
    """A run name usable as one directory component (other characters become '_')."""
    cleaned = _SAFE.sub("_", str(name)).strip("._") or "run"
    return cleaned[:120]


def inside(base: Path, path: str | Path) -> Path:
    """``base / path`` resolved, refusing anything that escapes ``base``."""
    base = Path(base).resolve()
    target = (base / path).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"output path '{path}' escapes the run directory {base}; use a path inside it")
    return target


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
