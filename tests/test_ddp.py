"""Data-parallel training: two CPU processes (gloo) at a global batch end with the weights of one process
at that batch; BatchNorm uses the global batch's statistics, input gradients (an inner attack's) included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from robustkit.builtin.shapes import shapes
from robustkit.defenses.baselines import madry_loss
from robustkit.errors import ConfigError
from robustkit.training import distributed as dp
from robustkit.training.loop import fit
from robustkit.training.seeding import fixed_seed
from robustkit.training.settings import TrainSettings

STANDARD = TrainSettings(
    epochs=2, batch_size=16, optimizer="sgd", lr=0.05, weight_decay=5e-4, train_size=None, augment="flip-crop"
)
# PGD-AT with a budget so small that the processes' own random starts change nothing measurable: what is
# compared is the inner attack's passes through BatchNorm over the global batch
ADVERSARIAL = TrainSettings(
    epochs=1, batch_size=16, optimizer="sgd", lr=0.05, train_size=None, eps=1e-6, steps=2, step_size=5e-7
)


def tiny() -> nn.Module:
    with fixed_seed(3):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1),
            nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10),
        )  # fmt: skip


def run(settings: TrainSettings, loss=None) -> dict[str, torch.Tensor]:
    model = tiny()
    extra = {"loss": loss} if loss is not None else {}
    fit(model, shapes("train", n=48), settings, device=torch.device("cpu"), progress=False, seed=1, **extra)
    return {k: v.clone() for k, v in model.state_dict().items()}


def bn_gradients(x: torch.Tensor, rows: slice) -> dict[str, torch.Tensor]:
    """Output, input gradient and parameter gradients of a BN model in training mode on ``x[rows]``,
    the loss being that of the global batch (summed over processes)."""
    model = tiny().train()
    xr = x[rows].clone().requires_grad_(True)
    with dp.synced_batchnorm(model):
        out = model(xr)
        (out.square().sum() * 0.01).backward()
    return {"out": out.detach(), "input": xr.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        save_file(run(STANDARD), f"{out}/standard-{rank}.safetensors")
        save_file(run(ADVERSARIAL, madry_loss), f"{out}/pgd-{rank}.safetensors")
        x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        grads = bn_gradients(x, dp.shard_rows(8))
        save_file({k: v.contiguous() for k, v in grads.items()}, f"{out}/grads-{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


def test_two_processes_match_one_at_the_same_global_batch(two):
    torch.set_num_threads(1)
    r0, r1 = (load_file(str(two / f"standard-{r}.safetensors")) for r in (0, 1))
    for k in r0:  # everyone ends with identical weights and BatchNorm statistics
        assert torch.equal(r0[k], r1[k]), k
    one = run(STANDARD)
    assert any(not torch.equal(one[k], tiny().state_dict()[k]) for k in one)  # it trained
    close(r0, one, atol=1e-5)


def test_adversarial_training_attacks_through_global_batchnorm(two):
    torch.set_num_threads(1)
    r0, r1 = (load_file(str(two / f"pgd-{r}.safetensors")) for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    close(r0, run(ADVERSARIAL, madry_loss), atol=1e-5)


def test_batchnorm_statistics_and_gradients_are_those_of_the_global_batch(two):
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = bn_gradients(x, slice(0, 8))
    parts = [load_file(str(two / f"grads-{r}.safetensors")) for r in (0, 1)]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), whole["out"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([p["input"] for p in parts]), whole["input"], atol=1e-6, rtol=1e-4)
    for name in (k for k in whole if k not in ("out", "input")):  # each process's share sums to the whole
        torch.testing.assert_close(parts[0][name] + parts[1][name], whole[name], atol=1e-5, rtol=1e-4)
    # without synchronization the shards' outputs differ (local batch statistics)
    local = tiny().train()(x[:4])
    assert not torch.allclose(local, parts[0]["out"], atol=1e-3)


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(dp, "world", lambda: (1, 3))
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        dp.shard_rows(16)
    assert dp.shard_rows(12) == slice(4, 8)


@pytest.mark.slow
def test_torchrun_cli_matches_one_process(tmp_path):
    args = ["train", "--defense", "standard", "--train-size", "64", "--batch-size", "16", "--epochs", "1"]
    args += ["--width", "4", "--device", "cpu", "--no-progress", "--augment", "flip", "--optimizer", "sgd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTKIT_CACHE": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "robustkit"]
    subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "robustkit", *args, "--out", str(tmp_path / "one")], check=True,
                   env=env, timeout=300)  # fmt: skip
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    close(a, b, atol=1e-5)
