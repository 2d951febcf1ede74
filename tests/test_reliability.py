"""Resume after SIGKILL, torchrun sharding, batch-size independence and CUDA OOM back-off; the fault
catalogue of docs/reliability.md (killed creation, corrupt store or config, read-only, full disk, concurrent
zoo training)."""

from __future__ import annotations

import json
import logging
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


# ----------------------------------------------------------------------------- faults (issue 18)
FGSM = {"name": "f", "attacks": [{"attack": "fgsm", "eps": "2/255"}]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shapes_model):
    """A tiny finished run (8 samples, one attack, batches of 4) and the suite file that made it."""
    import yaml

    out = tmp_path_factory.mktemp("finished")
    (out / "f.yaml").write_text(yaml.safe_dump(FGSM))
    evaluate(suite=FGSM, out=out, name="r", limit=8, batch_size=4, device="cpu", progress=False, report=False)
    return out / "r"


def _again(finished, tmp_path, *extra):
    """A copy of the finished run in ``tmp_path`` and the CLI arguments that rerun it there."""
    run = tmp_path / "r"
    shutil.copytree(finished, run)
    suite = str(finished.parent / "f.yaml")
    args = ["evaluate", "--suite", suite, "--out", str(tmp_path), "--name", "r", "--limit", "8",
            "--batch-size", "4", "--device", "cpu", "--quiet", *extra]  # fmt: skip
    return run, args


def test_killed_creation_leaves_temp_files_that_are_cleaned_up(finished, tmp_path, capsys, caplog):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    shutil.rmtree(run)
    run.mkdir()  # what a SIGKILL while config.yaml was being written leaves: temporary files only
    (run / ".config.yaml.k3x9.tmp").write_text("model: null\nmodel_sha2")
    (run / "config.yaml.tmp").write_text("")
    assert main(args) == 0, capsys.readouterr().err
    assert any("left by an interrupted start" in r.getMessage() for r in caplog.records)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    assert _outcomes(run) == _outcomes(finished)
    # a directory holding anything else is not touched and not taken for a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (other / "x.tmp").write_text("")
    args[args.index("--name") + 1] = "other"
    code = main(args)
    assert code == 2 and "is not a robustkit run" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt", "x.tmp"]


def test_resume_says_from_how_many_samples_on_stderr_and_is_identical(finished, tmp_path):
    run, args = _again(finished, tmp_path)
    db = sqlite3.connect(run / "results.sqlite")
    db.execute("DELETE FROM outcomes WHERE idx >= 4")  # killed after the first batch of the attack
    db.commit()
    db.close()
    (run / "summary.json").unlink()
    done = subprocess.run([sys.executable, "-m", "robustkit", *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming run r from 4 of 8 samples" in done.stderr  # at the default level, no flag needed
    assert _outcomes(run) == _outcomes(finished)


def test_rerunning_a_complete_run_says_so(finished, tmp_path, caplog):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    assert main(args) == 0
    said = [r for r in caplog.records if "already complete" in r.getMessage()]
    assert said and said[0].levelno == logging.INFO and "all 8 samples" in said[0].getMessage()
    assert logging.getLogger("robustkit.evaluation.runner").isEnabledFor(logging.INFO)  # the CLI default


def test_a_run_that_ends_incomplete_says_so(finished, tmp_path, caplog, monkeypatch):
    from robustkit.cli import main
    from robustkit.evaluation import runner

    run, args = _again(finished, tmp_path)
    shutil.rmtree(run)
    real = runner.run_suite
    monkeypatch.setattr(runner, "run_suite", lambda job, batches, *a: real(job, batches[:1], *a))
    assert main(args) == 0  # the documented exit code of a run that ended; the warning says the rest
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "INCOMPLETE" in r.getMessage()]
    assert warned and "clean pass on 4 of 8 samples" in warned[0].getMessage()
    assert "run the same command again" in warned[0].getMessage().lower()
    assert json.loads((run / "summary.json").read_text())["complete"] is False
    monkeypatch.undo()
    caplog.clear()
    assert main(args) == 0
    assert not [r for r in caplog.records if "INCOMPLETE" in r.getMessage()]
    assert json.loads((run / "summary.json").read_text())["complete"] is True
    assert _outcomes(run) == _outcomes(finished)


def _truncate(run):
    path = run / "results.sqlite"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _bad_yaml(run):
    (run / "config.yaml").write_text("model: null\nsuite: {name: f, attacks: [{attack: fgsm")


def _not_a_config(run):
    (run / "config.yaml").write_text("model")  # truncated to a scalar


def _store_is_a_dir(run):
    (run / "results.sqlite").unlink()
    (run / "results.sqlite").mkdir()


@pytest.mark.parametrize(
    "fault,file,says",
    [
        (_truncate, "results.sqlite", "is unreadable or corrupt"),
        (_bad_yaml, "config.yaml", "not valid YAML"),
        (_not_a_config, "config.yaml", "not a robustkit run configuration"),
        (_store_is_a_dir, "results.sqlite", "is a directory"),
    ],
)
def test_corrupt_store_or_config_exits_2_naming_the_file(finished, tmp_path, capsys, fault, file, says):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    fault(run)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and str(run / file) in err and says in err and "--overwrite" in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert main([*args, "--overwrite"]) == 0  # the fix the message names works
    assert _outcomes(run) == _outcomes(finished)


def test_read_only_run_directory_exits_2_saying_what_to_do(finished, tmp_path, capsys, monkeypatch):
    from robustkit.cli import main
    from robustkit.evaluation import store

    run, args = _again(finished, tmp_path)
    (run / "summary.json").unlink()
    modes = {p: p.stat().st_mode for p in [run, *run.iterdir()]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    if os.geteuid() == 0:  # root writes through permissions: open the store as a read-only mount would
        connect = sqlite3.connect
        monkeypatch.setattr(
            store.sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw)
        )
    try:
        code = main(args)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    err = capsys.readouterr().err
    assert code == 2 and "results.sqlite" in err and "read-only" in err and "chmod" in err, err
    monkeypatch.undo()
    assert main(args) == 0 and _outcomes(run) == _outcomes(finished)  # nothing was lost


def test_full_disk_exits_2_naming_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch, finished):
    import errno

    from robustkit import files
    from robustkit.cli import main

    _, args = _again(finished, tmp_path)
    args[args.index("--name") + 1] = "new"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "new" / "config.yaml") in err and "disk is full" in err, err
    assert not [p for p in (tmp_path / "new").rglob("*") if p.is_file()]  # no half-written run, no temp file


def test_full_disk_while_committing_results_then_resume(tmp_path, capsys, monkeypatch, finished):
    from robustkit.cli import main
    from robustkit.evaluation.store import Store

    _, args = _again(finished, tmp_path)
    opened = Store.__init__

    def capped(self, path):  # the store may not grow past its first batch: sqlite's own "disk is full"
        opened(self, path)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages + 1}")

    shutil.rmtree(tmp_path / "r")
    monkeypatch.setattr(Store, "__init__", capped)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "r" / "results.sqlite") in err and "disk is full" in err, err
    monkeypatch.undo()
    assert main(args) == 0  # space freed: the same command resumes from what was committed
    assert _outcomes(tmp_path / "r") == _outcomes(finished)


# ----------------------------------------------------------------------------- more faults
def test_resume_with_other_threads_and_quiet_is_identical(finished, tmp_path):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    db = sqlite3.connect(run / "results.sqlite")
    db.execute("DELETE FROM outcomes WHERE idx >= 4")  # killed half-way through the attack
    db.commit()
    db.close()
    (run / "summary.json").unlink()
    args = [a for a in args if a != "--quiet"]  # progress on, one thread: neither is part of the identity
    before = torch.get_num_threads()
    try:
        assert main([*args, "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert _outcomes(run) == _outcomes(finished)
    assert json.loads((run / "summary.json").read_text())["complete"] is True


@pytest.mark.parametrize("option,value,differs", [("--limit", "6", "limit"), ("--seed", "1", "seed"),
                                                  ("--eps", "4/255", "suite")])  # fmt: skip
def test_resume_with_an_option_that_changes_results_is_refused(finished, tmp_path, capsys, option, value,
                                                               differs):  # fmt: skip
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    before = _outcomes(run)
    code = main([*args, option, value])
    err = capsys.readouterr().err
    assert code == 2 and f"differs in: {differs}" in err and "--overwrite" in err, err
    assert _outcomes(run) == before  # nothing touched


def test_recipe_edited_between_a_kill_and_the_rerun_is_refused(finished, tmp_path, capsys):
    import yaml

    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    edited = tmp_path / "f.yaml"  # the same file name, another step: the config swapped under the run
    edited.write_text(yaml.safe_dump({**FGSM, "attacks": [{"attack": "fgsm", "eps": "3/255"}]}))
    args[args.index("--suite") + 1] = str(edited)
    (run / "summary.json").unlink()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "differs in: suite" in err, err
    assert _outcomes(run) == _outcomes(finished)


def test_config_yaml_deleted_from_a_run_is_refused_untouched(finished, tmp_path, capsys):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    (run / "config.yaml").unlink()
    names = sorted(p.name for p in run.iterdir())
    code = main(args)
    assert code == 2 and "is not a robustkit run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == names  # the store is not thrown away
    assert main([*args, "--overwrite"]) == 0 and _outcomes(run) == _outcomes(finished)


def test_store_deleted_from_a_run_starts_over_identically(finished, tmp_path):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    for p in run.glob("results.sqlite*"):
        p.unlink()
    assert main(args) == 0
    assert _outcomes(run) == _outcomes(finished)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_summary_deleted_or_truncated_is_rewritten(finished, tmp_path, damage):
    from robustkit.cli import main

    run, args = _again(finished, tmp_path)
    summary = run / "summary.json"
    if damage == "deleted":
        summary.unlink()
    else:
        summary.write_text(summary.read_text()[:40])
    assert main(args) == 0
    assert _summary(run) == _summary(finished) and _outcomes(run) == _outcomes(finished)


def test_killed_while_writing_the_report_then_rerun(finished, tmp_path, capsys, monkeypatch):
    from robustkit.cli import main
    from robustkit.report import render

    run, args = _again(finished, tmp_path)
    args = [*args, "--name", "rep"]
    shutil.copytree(run, tmp_path / "rep")
    run = tmp_path / "rep"

    def killed(path, text):  # the temporary file half-written, then the process is gone
        Path(path).with_name(f".{Path(path).name}.x1.tmp").write_text(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "atomic_write", killed)
    assert main(args) == 130 and "run the same command again" in capsys.readouterr().err
    assert not (run / "report.html").exists()  # never a half report under the real name
    monkeypatch.undo()
    assert main(args) == 0
    assert (run / "report.html").read_text().rstrip().endswith("</html>")
    assert _outcomes(run) == _outcomes(finished)


def test_concurrent_runs_into_the_same_directory(finished, tmp_path):
    _, args = _again(finished, tmp_path)
    args[args.index("--name") + 1] = "two"
    cmd = [sys.executable, "-m", "robustkit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    ends = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for code, err in ends:  # each finished the run, or was refused with a clear message
        assert code == 0 or (code == 2 and "another process" in err), err
        assert "Traceback" not in err and "internal error" not in err, err
    assert any(code == 0 for code, _ in ends)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _outcomes(tmp_path / "two") == _outcomes(finished)


def _fake_zoo(cache: Path, name: str):
    from torch import nn

    from robustkit.builtin.zoo import ZOO, ZooEntry, register_zoo, zoo_path

    def train(model, device, progress):
        (cache / f"trained-{name}").write_text(str(int((cache / f"trained-{name}").exists()) + 1))
        with torch.no_grad():
            model.weight.fill_(0.5)
        return {}

    if name not in ZOO._items:
        register_zoo(ZooEntry(name=name, dataset="none", build=lambda: nn.Linear(3, 2), train=train))
    return zoo_path(name)


def test_a_stale_lock_file_does_not_block(tmp_path, monkeypatch):
    from robustkit.builtin.zoo import load_zoo_model

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))
    path = _fake_zoo(tmp_path, "stale-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".lock").write_text("12345")  # left by a process that was killed holding the lock
    started = time.monotonic()
    assert load_zoo_model("stale-lock", progress=False).weight[0, 0].item() == 0.5
    assert time.monotonic() - started < 30  # a lock dies with its process: nothing waits for it


def test_corrupt_or_half_written_zoo_cache_is_retrained(tmp_path, monkeypatch, caplog):
    from robustkit.builtin.zoo import load_zoo_model

    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))
    path = _fake_zoo(tmp_path, "corrupt-cache")
    load_zoo_model("corrupt-cache", progress=False)
    path.write_bytes(path.read_bytes()[:20])  # damaged on disk: fails its checksum
    (path.parent / f".{path.name}.k1.tmp").write_bytes(b"half")  # and a killed write's temporary file
    assert load_zoo_model("corrupt-cache", progress=False).weight[0, 0].item() == 0.5
    assert (tmp_path / "trained-corrupt-cache").read_text() == "2"  # retrained once, with a warning
    assert any("fail their checksum" in r.getMessage() for r in caplog.records)
    assert load_zoo_model("corrupt-cache", progress=False).weight[0, 0].item() == 0.5
    assert (tmp_path / "trained-corrupt-cache").read_text() == "2"  # now verified: not trained again


def _zoo_worker(cache: str, barrier, results) -> None:
    """One process asking for a zoo model that is not cached yet (spawned: nothing shared but the disk)."""
    os.environ["ROBUSTKIT_CACHE"] = cache
    from torch import nn

    from robustkit.builtin.zoo import ZooEntry, load_zoo_model, register_zoo

    def train(model, device, progress):
        Path(cache, f"trained-by-{os.getpid()}").touch()
        with torch.no_grad():
            model.weight.fill_(os.getpid())  # each process's weights are its own
        time.sleep(1.5)  # long enough for the other process to arrive while this one trains
        return {"pid": os.getpid()}

    register_zoo(ZooEntry(name="lock-test", dataset="none", build=lambda: nn.Linear(3, 2), train=train))
    barrier.wait()
    results.put(load_zoo_model("lock-test", progress=False).weight[0, 0].item())


def _two_processes(worker, cache: Path) -> list:
    """Run ``worker(cache, barrier, results)`` in two spawned processes at once; what each put."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(str(cache), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_two_processes_training_the_same_zoo_model_train_it_once(tmp_path):
    got = _two_processes(_zoo_worker, tmp_path)
    trained = list(tmp_path.glob("trained-by-*"))
    assert len(trained) == 1  # the second process waited for the lock, then loaded the first one's weights
    assert got == [float(trained[0].name.rsplit("-", 1)[1])] * 2
    assert not list((tmp_path / "zoo").glob("*.tmp"))


def _defense_worker(cache: str, barrier, results) -> None:
    """One process asking for a defense that is not cached yet (spawned: nothing shared but the disk)."""
    os.environ["ROBUSTKIT_CACHE"] = cache
    torch.set_num_threads(1)
    from robustkit.defenses import loading

    real = loading.train_defense

    def tiny(name, dataset, **kw):  # the recipe trained for real, at test scale, and counted
        Path(cache, f"trained-by-{os.getpid()}").touch()
        time.sleep(1.5)  # long enough for the other process to arrive while this one trains
        return real(name, dataset, epochs=1, train_size=32, batch_size=16, width=4, test_size=16, **kw)

    loading.train_defense = tiny
    barrier.wait()
    model, info = loading.cached_model("standard", "shapes", torch.device("cpu"), False)
    results.put((info["sha256"], float(next(model.parameters()).flatten()[0])))


def test_two_processes_training_the_same_defense_train_it_once(tmp_path):
    got = _two_processes(_defense_worker, tmp_path)
    assert len(list(tmp_path.glob("trained-by-*"))) == 1  # the second waited for the lock, then loaded
    assert got[0] == got[1]  # both hold the one trained model
    assert not [p for p in (tmp_path / "defenses").rglob("*") if ".tmp" in p.name]


def test_the_catalogue_names_tests_that_exist():
    import re

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"`(test_\w+)`", (root / "docs" / "reliability.md").read_text()))
    defined = {
        m for f in root.glob("tests/test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)
    }
    assert named and named <= defined, sorted(named - defined)
    mine = set(re.findall(r"^def (test_\w+)", Path(__file__).read_text(), re.M))
    assert mine - {"test_the_catalogue_names_tests_that_exist"} <= named  # every fault tested here is listed
