"""Run directories and atomic writes: nothing half-written, nothing outside the run directory; file
locks between processes; environment faults (read-only, disk full, corrupt) as :class:`StorageError`.
The cache root, and small JSON values cached there while the files they were computed from are unchanged."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, StorageError

try:  # POSIX; elsewhere file_lock does not lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
TEMP_SUFFIX = ".tmp"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


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


def storage_error(path: str | Path, exc: BaseException, fix: str = "") -> StorageError:
    """The :class:`StorageError` for ``exc`` (an ``OSError`` or a sqlite error) met at ``path``: it names
    the file and says what to do (``fix``: the advice when the file is corrupt or in the way)."""
    path = Path(path)
    text = str(exc) or type(exc).__name__
    code, low = getattr(exc, "errno", None), text.lower()
    # a file's content (a ValueError) is never the directory's fault; anything else may be
    writable = isinstance(exc, ValueError) or (
        os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    )
    fix = fix or "move it away and run the same command again"
    if code in _FULL or "disk is full" in low or "disk full" in low:
        message = (
            f"cannot write {path}: the disk is full ({text}). Free some space, then run the same command "
            "again to resume."
        )
    elif code in _READ_ONLY or "readonly" in low or "read-only" in low or not writable:
        message = (
            f"cannot write {path}: it or its directory is read-only ({text}). Make it writable "
            f"(chmod -R u+w {path.parent}), or work somewhere writable (another --out; copy a run there "
            "to resume it)."
        )
    elif "locked" in low:
        message = (
            f"{path} is locked by another process ({text}): is the same run going on elsewhere? Wait for "
            "it, then run the command again."
        )
    elif path.is_dir():
        message = f"{path} is a directory where a file belongs: {fix}."
    else:
        message = f"{path} is unreadable or corrupt ({text}): {fix}."
    return StorageError(message)


def is_temporary(path: Path) -> bool:
    """A temporary file that an interrupted atomic write left behind."""
    return path.is_file() and TEMP_SUFFIX in path.name


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``; a failure
    leaves nothing behind and is a :class:`StorageError` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed, left in place) for the block: another
    process taking the same lock waits until this one is done (``what`` is logged while it waits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is None:  # pragma: no cover
            yield
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s (lock %s)", what or "its work", path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
