"""Run directories and atomic writes: nothing half-written, nothing outside the run directory. The cache
root, and small JSON values cached there while the files they were computed from are unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

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


def cache_root() -> Path:
    """Where robustkit keeps what it trains on first use: ``$ROBUSTKIT_CACHE``, else
    ``$XDG_CACHE_HOME/robustkit`` (``~/.cache/robustkit``)."""
    root = os.environ.get("ROBUSTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "robustkit"
    )
    return Path(root)


def files_stamp(paths: Iterable[str | Path], *extra: str) -> str:
    """A digest of the paths with their sizes and modification times (and ``extra``): it changes when
    one of the files is added, removed or edited."""
    digest = hashlib.sha256("\0".join(extra).encode())
    for path in sorted(str(p) for p in paths):
        st = os.stat(path)
        digest.update(f"\n{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_json(path: str | Path, stamp: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s value (JSON), kept in ``path`` and reused while ``stamp`` is the same; an unreadable,
    stale or unwritable cache only costs the computation."""
    path = Path(path)
    try:
        cached = json.loads(path.read_text())
        if cached["stamp"] == stamp:
            return cached["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    try:
        atomic_write(path, json.dumps({"stamp": stamp, "value": value}))
    except OSError as exc:
        log.debug("not cached: %s (%s)", path, exc)
    return value
