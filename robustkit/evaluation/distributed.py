"""Scaling out with torchrun: each rank evaluates a disjoint shard of batches into its own store;
rank 0 merges the shards and renders. Batches are assigned round-robin by batch number, so every
batch has the same composition as in a single-process run and the results are identical.

    torchrun --nproc-per-node 2 -m robustkit evaluate ...          # one machine, 2 processes/GPUs
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 8 -m robustkit evaluate ...
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import torch
import torch.distributed as dist

from .store import SCHEMA


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device: torch.device) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) when started by torchrun."""
    _, size, _ = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_error(failed: bool) -> bool:
    """True on every rank when any rank failed (so no rank waits forever at a barrier)."""
    if not (dist.is_available() and dist.is_initialized()):
        return failed
    flag = torch.tensor([1 if failed else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def shard(batches: list[list[int]], rank: int, size: int) -> list[list[int]]:
    return batches[rank::size]


def merge(parts: list[Path], target: Path) -> None:
    """Copy every rank's rows into a fresh ``target`` store (meta from rank 0)."""
    tmp = target.with_suffix(".merging")
    if tmp.exists():
        tmp.unlink()
    db = sqlite3.connect(str(tmp))
    db.executescript(SCHEMA)
    for r, part in enumerate(parts):
        db.execute("ATTACH DATABASE ? AS part", (str(part),))
        for table in ("samples", "attacks", "outcomes", "batches", "artifacts", "examples", "findings"):
            db.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM part.{table}")
        if r == 0:
            db.execute("INSERT OR REPLACE INTO meta SELECT * FROM part.meta")
        db.commit()
        db.execute("DETACH DATABASE part")
    db.commit()
    db.close()
    for suffix in ("-wal", "-shm"):
        side = Path(str(target) + suffix)
        if side.exists():
            side.unlink()
    os.replace(tmp, target)
