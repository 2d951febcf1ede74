"""Resume after SIGKILL, torchrun sharding, batch-size independence and CUDA OOM back-off."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustkit.api import evaluate

SUITE = {
    "name": "mini",
    "attacks": [{"attack": "pgd", "eps": ["2/255", "4/255"], "steps": 4}, {"attack": "fgsm", "eps": "2/255"}],
}
TIMING = {"seconds", "elapsed", "findings"}


def _outcomes(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / "results.sqlite")
    rows = db.execute(
        "SELECT a.name, o.idx, o.attacked, o.claimed, o.robust, o.pred, round(o.confidence, 5), round(o.linf, 6) "
        "FROM outcomes o JOIN attacks a ON a.id = o.attack_id ORDER BY a.name, o.idx"
    ).fetchall()
    rows += db.execute(
        "SELECT 'clean', idx, label, pred, correct, 0, round(confidence, 5), 0 FROM samples ORDER BY idx"
    ).fetchall()
    db.close()
    return rows


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    for a in s["attacks"]:
        a.pop("seconds")
    return {k: v for k, v in s.items() if k not in TIMING and k != "device"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_model):
    out = tmp_path_factory.mktemp("ref")
    evaluate(
        suite=SUITE, out=out, name="ref", limit=48, batch_size=8, device="cpu", progress=False, report=False
    )
    return out / "ref"


def test_batch_size_does_not_change_results(reference, tmp_path):
    evaluate(
        suite=SUITE,
        out=tmp_path,
        name="b16",
        limit=48,
        batch_size=16,
        device="cpu",
        progress=False,
        report=False,
    )
    assert _outcomes(tmp_path / "b16") == _outcomes(reference)


def test_sigkill_at_random_points_then_resume_is_identical(reference, tmp_path):
    suite_file = tmp_path / "mini.yaml"
    import yaml

    suite_file.write_text(yaml.safe_dump(SUITE))
    cmd = [sys.executable, "-m", "robustkit", "evaluate", "--suite", str(suite_file), "--out", str(tmp_path), "--name", "k",
           "--limit", "48", "--batch-size", "8", "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(0)
    total = 6 * (1 + 3)  # batch rows of a finished run: the clean pass and 3 attacks over 6 batches
    kills = 0
    for target in sorted(rng.sample(range(1, total - 2), 3)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait for the target number of committed batches, then kill at a random moment after it:
        # between two commits, in the middle of an attack or of a write
        while _committed_batches(tmp_path / "k") < target and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    assert not (tmp_path / "k" / "summary.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _outcomes(tmp_path / "k") == _outcomes(reference)
    s, ref = _summary(tmp_path / "k"), _summary(reference)
    s.pop("run"), ref.pop("run")
    assert s == ref


def _committed_batches(run_dir: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_ctrl_c_leaves_a_resumable_run_and_says_how(reference, tmp_path):
    suite_file = tmp_path / "mini.yaml"
    import yaml

    suite_file.write_text(yaml.safe_dump(SUITE))
    cmd = [sys.executable, "-m", "robustkit", "evaluate", "--suite", str(suite_file), "--out", str(tmp_path), "--name", "c",
           "--limit", "48", "--batch-size", "8", "--device", "cpu", "--quiet"]  # fmt: skip
    # A shell's background jobs inherit SIGINT ignored (and Python then keeps ignoring it): restore it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore
    )
    deadline = time.monotonic() + 300
    while _committed_batches(tmp_path / "c") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert not (tmp_path / "c" / "summary.json").exists()  # nothing presented as complete
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _outcomes(tmp_path / "c") == _outcomes(reference)


def test_torchrun_two_processes_equal_single_process(reference, tmp_path):
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    suite_file = tmp_path / "mini.yaml"
    import yaml

    suite_file.write_text(yaml.safe_dump(SUITE))
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "-m", "robustkit", "evaluate", "--suite", str(suite_file),
           "--out", str(tmp_path), "--name", "dist", "--limit", "48", "--batch-size", "8", "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "dist" / "results.rank0.sqlite").exists() and (
        tmp_path / "dist" / "results.rank1.sqlite"
    ).exists()
    assert _outcomes(tmp_path / "dist") == _outcomes(reference)
    s, ref = _summary(tmp_path / "dist"), _summary(reference)
    s.pop("run"), ref.pop("run")
    assert s == ref


def test_cuda_oom_halves_the_batch_and_continues(tmp_path, shapes_model):
    class OOMOver4(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[0] > 4 and torch.is_grad_enabled():
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    res = evaluate(model=OOMOver4(shapes_model), suite=SUITE, out=tmp_path, name="oom", limit=16, batch_size=16,
                   device="cpu", progress=False, report=False)  # fmt: skip
    assert res.summary["oom_backoffs"] and res.summary["oom_backoffs"][0]["from"] > 4
    ref = evaluate(
        suite=SUITE,
        out=tmp_path,
        name="ref",
        limit=16,
        batch_size=4,
        device="cpu",
        progress=False,
        report=False,
    )
    assert [a["robust_accuracy"] for a in res.summary["attacks"]] == [
        a["robust_accuracy"] for a in ref.summary["attacks"]
    ]
