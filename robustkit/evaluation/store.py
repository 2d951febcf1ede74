"""The results store: one SQLite file per run (per rank when sharded), written in transactions.

Everything the summary and the report need is here: per-sample clean outcomes, per-sample per-attack
outcomes, batch timings and composition, artifacts, gallery examples, findings and provenance. A run
killed at any moment resumes from what was committed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY, label INTEGER NOT NULL, pred INTEGER NOT NULL,
    correct INTEGER NOT NULL, confidence REAL NOT NULL);
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
CREATE TABLE IF NOT EXISTS artifacts (
    attack_id INTEGER NOT NULL, first_idx INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (attack_id, first_idx, key));
CREATE TABLE IF NOT EXISTS examples (
    attack_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (attack_id, idx));
CREATE TABLE IF NOT EXISTS findings (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, evidence TEXT NOT NULL, advice TEXT NOT NULL);
"""


def pack_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    return st_load(blob)


class Store:
    """Thin typed access to the run database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all."""
        try:
            yield self.db
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # --- clean pass -------------------------------------------------------------------------
    def clean_done(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT idx FROM samples")}

    def write_clean(self, rows: Iterable[tuple[int, int, int, bool, float]], batch_row: tuple) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?)",
                [(i, y, p, int(c), f) for i, y, p, c, f in rows],
            )
            db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)", batch_row)

    def samples(self) -> list[tuple[int, int, int, int, float]]:
        return self.db.execute(
            "SELECT idx, label, pred, correct, confidence FROM samples ORDER BY idx"
        ).fetchall()

    # --- attacks ----------------------------------------------------------------------------
    def attack_id(
        self, name: str, attack: str, params: dict, eps: float | None, norm: str | None, kind: str
    ) -> int:
        row = self.db.execute("SELECT id FROM attacks WHERE name = ?", (name,)).fetchone()
        if row:
            return int(row[0])
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO attacks (name, attack, params, eps, norm, kind) VALUES (?, ?, ?, ?, ?, ?)",
                (name, attack, json.dumps(params, default=str), eps, norm, kind),
            )
        return int(cur.lastrowid)

    def attacks(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, name, attack, params, eps, norm, kind FROM attacks ORDER BY id"
        ).fetchall()
        return [
            {
                "id": r[0],
                "name": r[1],
                "attack": r[2],
                "params": json.loads(r[3]),
                "eps": r[4],
                "norm": r[5],
                "kind": r[6],
            }
            for r in rows
        ]

    def attacked(self, attack_id: int) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT idx FROM outcomes WHERE attack_id = ?", (attack_id,))}

    def write_outcomes(
        self,
        attack_id: int,
        rows: list[tuple],
        batch_row: tuple,
        artifacts: dict[str, tuple[str, bytes]],
        examples: dict[int, bytes],
    ) -> None:
        """One batch of one attack: outcomes, timing, artifacts and gallery examples in one transaction."""
        first = batch_row[1]
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(attack_id, *r) for r in rows],
            )
            db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)", batch_row)
            db.executemany(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                [(attack_id, first, k, kind, data) for k, (kind, data) in artifacts.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?)",
                [(attack_id, i, b) for i, b in examples.items()],
            )

    def outcomes(self, attack_id: int) -> list[tuple]:
        return self.db.execute(
            "SELECT idx, attacked, claimed, robust, pred, confidence, linf, l2, metrics FROM outcomes "
            "WHERE attack_id = ? ORDER BY idx",
            (attack_id,),
        ).fetchall()

    def batches(self, stage: str | None = None) -> list[tuple]:
        if stage is None:
            return self.db.execute(
                "SELECT stage, first_idx, size, seconds, counters, indices FROM batches"
            ).fetchall()
        return self.db.execute(
            "SELECT stage, first_idx, size, seconds, counters, indices FROM batches WHERE stage = ?", (stage,)
        ).fetchall()

    def artifacts(self, attack_id: int) -> list[tuple[int, str, str, bytes]]:
        return self.db.execute(
            "SELECT first_idx, key, kind, data FROM artifacts WHERE attack_id = ? ORDER BY first_idx, key",
            (attack_id,),
        ).fetchall()

    def json_artifacts(self, attack_id: int, name: str) -> list[Any]:
        """The decoded JSON artifacts called ``name`` of every batch, in batch order, including the
        ``name#2`` of a batch split in two after running out of memory."""
        return [
            json.loads(data)
            for _, key, kind, data in self.artifacts(attack_id)
            if kind == "json" and key.split("#")[0] == name
        ]

    def examples(self, attack_id: int) -> dict[int, bytes]:
        return dict(
            self.db.execute(
                "SELECT idx, data FROM examples WHERE attack_id = ? ORDER BY idx", (attack_id,)
            ).fetchall()
        )

    # --- findings ---------------------------------------------------------------------------
    def write_findings(self, findings: Iterable[tuple[str, str, str, str]]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO findings VALUES (?, ?, ?, ?)", list(findings))

    def findings(self) -> list[dict[str, str]]:
        rows = self.db.execute("SELECT name, status, evidence, advice FROM findings ORDER BY name").fetchall()
        return [{"name": r[0], "status": r[1], "evidence": r[2], "advice": r[3]} for r in rows]
