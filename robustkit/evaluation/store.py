"""The results store: one SQLite file per run (per rank when sharded), written in transactions.

Everything the summary and the report need is here: per-sample clean outcomes, per-sample per-attack
outcomes, batch timings and composition, artifacts, gallery examples, findings and provenance. A run
killed at any moment resumes from what was committed.

Rows come back as typed records (:class:`SampleRecord`, :class:`Outcome`, :class:`BatchRecord`,
:class:`ArtifactRecord`) through sqlite row factories, and are written from the same records: the
runner, the metrics, the profile and the report read them by field name, never by position.
Per-sample metrics (``AttackResult.metrics``) are stored generically in ``Outcome.metrics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..files import storage_error

STORE_FILE = "results.sqlite"
STORE_FIX = (
    "the results in it cannot be read. Pass --overwrite (overwrite=True) to start the run over, or move "
    "the run directory away to keep it for inspection"
)

ARTIFACTS = """CREATE TABLE IF NOT EXISTS artifacts (
    attack_id INTEGER NOT NULL, first_idx INTEGER NOT NULL, key TEXT NOT NULL, part INTEGER NOT NULL,
    kind TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (attack_id, first_idx, key, part))"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY, label INTEGER NOT NULL, pred INTEGER NOT NULL,
    correct INTEGER NOT NULL, confidence REAL NOT NULL, accuracy REAL);
CREATE TABLE IF NOT EXISTS attacks (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, attack TEXT NOT NULL, params TEXT NOT NULL,
    eps REAL, norm TEXT, kind TEXT);
CREATE TABLE IF NOT EXISTS outcomes (
    attack_id INTEGER NOT NULL, idx INTEGER NOT NULL, attacked INTEGER NOT NULL, claimed INTEGER NOT NULL,
    robust INTEGER NOT NULL, pred INTEGER NOT NULL, confidence REAL NOT NULL, linf REAL, l2 REAL,
    metrics TEXT, PRIMARY KEY (attack_id, idx));
CREATE TABLE IF NOT EXISTS batches (
    stage TEXT NOT NULL, first_idx INTEGER NOT NULL, size INTEGER NOT NULL, seconds REAL NOT NULL,
    counters TEXT, indices TEXT, PRIMARY KEY (stage, first_idx));
{ARTIFACTS};
CREATE TABLE IF NOT EXISTS examples (
    attack_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (attack_id, idx));
CREATE TABLE IF NOT EXISTS findings (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, evidence TEXT NOT NULL, advice TEXT NOT NULL);
"""

R = TypeVar("R")


def _same(v: Any) -> Any:
    return v


def _json_or(default: Callable[[], Any]) -> Callable[[Any], Any]:
    return lambda text: json.loads(text) if text else default()


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value else None


@dataclass(frozen=True, slots=True)
class Record:
    """A typed row: ``READ`` converts the sqlite values to the fields (in field order), ``WRITE`` back."""

    READ: ClassVar[tuple[Callable[[Any], Any], ...]] = ()
    WRITE: ClassVar[tuple[Callable[[Any], Any], ...]] = ()

    @classmethod
    def from_row(cls: type[R], row: tuple) -> R:
        return cls(*(read(v) for read, v in zip(cls.READ, row, strict=True)))  # type: ignore[attr-defined]

    def row(self) -> tuple:
        names = [f.name for f in dataclasses.fields(self)]
        return tuple(write(getattr(self, n)) for write, n in zip(self.WRITE, names, strict=True))


@dataclass(frozen=True, slots=True)
class SampleRecord(Record):
    """One sample's clean pass. ``accuracy``: for a stochastic model, the fraction of fresh draws that
    classify it correctly (``correct``: in some draw); None for a deterministic one."""

    idx: int
    label: int
    pred: int
    correct: bool
    confidence: float
    accuracy: float | None = None

    READ = (int, int, int, bool, float, _same)
    WRITE = (int, int, int, int, float, _same)

    @property
    def score(self) -> float:
        """Its clean accuracy: the fraction of draws, or 1 / 0."""
        return float(self.correct) if self.accuracy is None else self.accuracy


@dataclass(frozen=True, slots=True)
class Outcome(Record):
    """One sample under one attack. ``attacked`` is False for a sample misclassified when clean;
    ``metrics`` holds the attack's per-sample metrics (``AttackResult.metrics``) by name."""

    idx: int
    attacked: bool
    claimed: bool
    robust: bool
    pred: int
    confidence: float
    linf: float | None = None
    l2: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    READ = (int, bool, bool, bool, int, float, _same, _same, _json_or(dict))
    WRITE = (int, int, int, int, int, float, _same, _same, _json_or_none)

    @property
    def score(self) -> float:
        """Robust accuracy of this sample: the fraction of fresh draws of a stochastic model that classify
        the adversarial example correctly (metric ``draw_accuracy``), else 1 / 0."""
        return float(self.metrics.get("draw_accuracy", self.robust))


@dataclass(frozen=True, slots=True)
class BatchRecord(Record):
    """One committed batch of one stage ('clean' or an attack name): the samples it covered and its cost."""

    stage: str
    first_idx: int
    size: int
    seconds: float
    counters: dict[str, Any] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)

    READ = (str, int, int, lambda v: float(v or 0.0), _json_or(dict), _json_or(list))
    WRITE = (str, int, int, float, json.dumps, json.dumps)


@dataclass(frozen=True, slots=True)
class ArtifactRecord(Record):
    """What an attack optimized or sampled on one batch: ``kind`` 'json' or 'tensor' (safetensors bytes).
    ``part`` numbers the pieces of a batch that was split after running out of memory (0 otherwise)."""

    first_idx: int
    key: str
    part: int
    kind: str
    data: bytes

    READ = WRITE = (int, str, int, str, bytes)

    def value(self) -> Any:
        """The decoded artifact: a tensor or plain JSON data."""
        return unpack_tensors(self.data)[self.key] if self.kind == "tensor" else json.loads(self.data)


def pack_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    return st_load(blob)


def _factory(make: Callable[[tuple], R]) -> Callable[[sqlite3.Cursor, tuple], R]:
    return lambda _cursor, row: make(row)


class Store:
    """Thin typed access to the run database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.guard():
            self.db = sqlite3.connect(str(self.path), timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            _add_artifact_parts(self.db)
            _add_sample_accuracy(self.db)
            self.db.commit()

    def close(self) -> None:
        if getattr(self, "db", None) is not None:  # None when opening failed
            self.db.close()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """sqlite's errors about the file itself (corrupt, truncated, a directory, read-only, disk full,
        locked) become a :class:`StorageError` naming the file and what to do; the connection is closed."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            if type(exc) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise  # integrity and programming errors are bugs, not the environment's
            with contextlib.suppress(sqlite3.Error):
                self.close()
            raise storage_error(self.path, exc, STORE_FIX) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all."""
        with self.guard():
            try:
                yield self.db
                self.db.commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.rollback()
                raise

    def _rows(self, sql: str, args: tuple | dict = ()) -> list[tuple]:
        with self.guard():
            return self.db.execute(sql, args).fetchall()

    def _records(self, make: Callable[[tuple], R], sql: str, args: tuple | dict = ()) -> list[R]:
        with self.guard():
            cur = self.db.cursor()
            cur.row_factory = _factory(make)
            return cur.execute(sql, args).fetchall()

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def meta(self, key: str, default: Any = None) -> Any:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def all_meta(self) -> dict[str, Any]:
        """Every meta entry (a value that is not JSON comes back as its text)."""
        out = {}
        for key, value in self._rows("SELECT key, value FROM meta"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    # --- clean pass -------------------------------------------------------------------------
    def clean_done(self) -> set[int]:
        return {idx for (idx,) in self._rows("SELECT idx FROM samples")}

    def write_clean(self, samples: Iterable[SampleRecord], batch: BatchRecord) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?)", [s.row() for s in samples]
            )
            db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)", batch.row())

    def samples(self) -> list[SampleRecord]:
        return self._records(
            SampleRecord.from_row,
            "SELECT idx, label, pred, correct, confidence, accuracy FROM samples ORDER BY idx",
        )

    # --- attacks ----------------------------------------------------------------------------
    def attack_id(
        self, name: str, attack: str, params: dict, eps: float | None, norm: str | None, kind: str
    ) -> int:
        rows = self._rows("SELECT id FROM attacks WHERE name = ?", (name,))
        if rows:
            return int(rows[0][0])
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO attacks (name, attack, params, eps, norm, kind) VALUES (?, ?, ?, ?, ?, ?)",
                (name, attack, json.dumps(params, default=str), eps, norm, kind),
            )
        return int(cur.lastrowid)

    def attacks(self) -> list[dict[str, Any]]:
        def make(row: tuple) -> dict[str, Any]:
            aid, name, attack, params, eps, norm, kind = row
            return {"id": aid, "name": name, "attack": attack, "params": json.loads(params), "eps": eps,
                    "norm": norm, "kind": kind}  # fmt: skip

        return self._records(
            make, "SELECT id, name, attack, params, eps, norm, kind FROM attacks ORDER BY id"
        )

    def attacked(self, attack_id: int) -> set[int]:
        return {idx for (idx,) in self._rows("SELECT idx FROM outcomes WHERE attack_id = ?", (attack_id,))}

    def write_outcomes(
        self,
        attack_id: int,
        outcomes: Iterable[Outcome],
        batch: BatchRecord,
        artifacts: Iterable[ArtifactRecord] = (),
        examples: dict[int, bytes] | None = None,
    ) -> None:
        """One batch of one attack: outcomes, timing, artifacts and gallery examples in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(attack_id, *o.row()) for o in outcomes],
            )
            db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)", batch.row())
            db.executemany(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                [(attack_id, *a.row()) for a in artifacts],
            )
            db.executemany(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?)",
                [(attack_id, i, b) for i, b in (examples or {}).items()],
            )

    def outcomes(self, attack_id: int) -> list[Outcome]:
        """The attack's outcomes by sample (``Outcome.score``: 1 / 0, or the fraction of fresh draws)."""
        return self._records(
            Outcome.from_row,
            "SELECT idx, attacked, claimed, robust, pred, confidence, linf, l2, metrics FROM outcomes "
            "WHERE attack_id = ? ORDER BY idx",
            (attack_id,),
        )

    def batches(self, stage: str | None = None) -> list[BatchRecord]:
        sql = "SELECT stage, first_idx, size, seconds, counters, indices FROM batches"
        if stage is None:
            return self._records(BatchRecord.from_row, sql)
        return self._records(BatchRecord.from_row, sql + " WHERE stage = ?", (stage,))

    def artifacts(
        self, attack_id: int, key: str | None = None, tensor_batches: int | None = None
    ) -> list[ArtifactRecord]:
        """The attack's artifacts in batch order (every part of a split batch), optionally only those
        called ``key``; with ``tensor_batches``, tensors of the first that many batches per key only."""
        return self._records(
            ArtifactRecord.from_row,
            "SELECT a.first_idx, a.key, a.part, a.kind, a.data FROM artifacts a "
            "WHERE a.attack_id = :attack AND (:key IS NULL OR a.key = :key) AND (a.kind != 'tensor' OR "
            ":batches IS NULL OR (SELECT COUNT(DISTINCT b.first_idx) FROM artifacts b WHERE b.attack_id = "
            "a.attack_id AND b.key = a.key AND b.first_idx < a.first_idx) < :batches) "
            "ORDER BY a.first_idx, a.key, a.part",
            {
                "attack": attack_id,
                "key": key,
                "batches": tensor_batches,
            },  # named: Python 3.14 refuses ?N + tuple
        )

    def json_artifacts(self, attack_id: int, key: str) -> list[Any]:
        """The decoded JSON artifacts called ``key`` of every batch (and every part of a split batch)."""
        return [a.value() for a in self.artifacts(attack_id, key) if a.kind == "json"]

    def examples(self, attack_id: int) -> dict[int, bytes]:
        return dict(
            self._rows("SELECT idx, data FROM examples WHERE attack_id = ? ORDER BY idx", (attack_id,))
        )

    # --- findings ---------------------------------------------------------------------------
    def write_findings(self, findings: Iterable[tuple[str, str, str, str]]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO findings VALUES (?, ?, ?, ?)", list(findings))

    def findings(self) -> list[dict[str, str]]:
        def make(row: tuple) -> dict[str, str]:
            return dict(zip(("name", "status", "evidence", "advice"), row, strict=True))

        return self._records(make, "SELECT name, status, evidence, advice FROM findings ORDER BY name")


def _add_artifact_parts(db: sqlite3.Connection) -> None:
    """Stores written before artifacts had a ``part`` column kept a split batch's second half under
    ``key#2``: move those rows to the new layout (``key``, part 1)."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(artifacts)")]
    if "part" in columns:
        return
    db.executescript(
        f"ALTER TABLE artifacts RENAME TO artifacts_old; {ARTIFACTS}; "
        "INSERT INTO artifacts SELECT attack_id, first_idx, "
        "CASE WHEN instr(key, '#') > 0 THEN substr(key, 1, instr(key, '#') - 1) ELSE key END, "
        "CASE WHEN instr(key, '#') > 0 THEN CAST(substr(key, instr(key, '#') + 1) AS INTEGER) - 1 ELSE 0 END, "
        "kind, data FROM artifacts_old; DROP TABLE artifacts_old;"
    )


def _add_sample_accuracy(db: sqlite3.Connection) -> None:
    """Stores written before the verdict over fresh draws lack ``samples.accuracy`` (NULL: deterministic)."""
    if "accuracy" not in [row[1] for row in db.execute("PRAGMA table_info(samples)")]:
        db.execute("ALTER TABLE samples ADD COLUMN accuracy REAL")
