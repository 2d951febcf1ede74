"""The run configuration, typed records and resume by sample (issue 14, the evaluation shell).

- ``RunConfig.identity()`` covers what can change a result (weights content, fast path) and nothing
  that cannot (batch size, threads, progress, output directory);
- a run interrupted and resumed with another batch size attacks every sample and ends with the same
  outcomes as an uninterrupted run;
- a per-sample metric computed by a new attack reaches the store and the report with no other edit;
- a batch split twice after running out of memory keeps every part's artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustkit.api import evaluate
from robustkit.attacks import ATTACKS, Attack, AttackResult
from robustkit.evaluation.config import RunConfig
from robustkit.evaluation.store import STORE_FILE, Store
from robustkit.report.load import load_run
from robustkit.report.render import render_html
from robustkit.report.sections import attack_metrics

SUITE = {
    "name": "mini",
    "attacks": [{"attack": "pgd", "eps": ["2/255", "8/255"], "steps": 3}, {"attack": "fgsm", "eps": "2/255"}],
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3), nn.BatchNorm1d(3)).eval()


def _data(model: nn.Module, n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 3  # a few clean-misclassified samples too
    return x, y


def _outcomes(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / STORE_FILE)
    try:
        rows = db.execute(
            "SELECT a.name, o.idx, o.attacked, o.claimed, o.robust, o.pred, round(o.confidence, 5), "
            "round(o.linf, 6), o.metrics FROM outcomes o JOIN attacks a ON a.id = o.attack_id ORDER BY a.name, o.idx"
        ).fetchall()
        # per-sample float metrics (a gradient norm) are rounded like the confidence: the last bits of a
        # batched matmul depend on the batch size
        rows = [(*r[:-1], _rounded(r[-1])) for r in rows]
        return rows + db.execute("SELECT * FROM samples ORDER BY idx").fetchall()
    finally:
        db.close()


def _rounded(metrics: str | None) -> str | None:
    if metrics is None:
        return None
    return repr(
        {k: round(v, 5) if isinstance(v, float) else v for k, v in sorted(json.loads(metrics).items())}
    )


def test_identity_follows_weights_content_at_the_same_path(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(4)}, str(weights))
    first = RunConfig(model="resnet18", weights=weights, suite=SUITE)
    save_file({"w": torch.ones(4)}, str(weights))
    second = RunConfig(model="resnet18", weights=weights, suite=SUITE)
    assert first.weights == second.weights and first.weights_sha256 != second.weights_sha256
    assert first.identity() != second.identity()
    diff = [k for k, v in first.identity().items() if second.identity()[k] != v]
    assert diff == ["weights_sha256"]


def test_identity_covers_the_fast_path_and_in_memory_weights():
    base = RunConfig(suite=SUITE)
    for option in ({"fold_bn": True}, {"channels_last": True}, {"compile": True}, {"amp": "bf16"}):
        assert base.replace(**option).identity() != base.identity(), option
    assert base.replace(amp="none").identity() == base.identity()
    model = _model()
    before = RunConfig(model=model, suite=SUITE).identity()
    with torch.no_grad():
        model[1].bias.add_(1.0)
    assert RunConfig(model=model, suite=SUITE).identity() != before
    x, y = _data(model, 6)
    data_before = RunConfig(data=(x, y), suite=SUITE).identity()
    x[0, 0, 0, 0] = 1 - x[0, 0, 0, 0]
    assert RunConfig(data=(x, y), suite=SUITE).identity() != data_before


def test_identity_ignores_what_cannot_change_a_result(tmp_path):
    base = RunConfig(suite=SUITE, seed=3, limit=10)
    same = base.replace(batch_size=7, threads=1, progress=False, out=tmp_path, name="other", gallery=0,
                        overwrite=True, report=False, profile=True, device="cpu")  # fmt: skip
    assert same.identity() == base.identity()
    assert base.replace(seed=4).identity() != base.identity()
    assert base.replace(limit=11).identity() != base.identity()


def test_config_is_validated_once_with_flag_names(tmp_path):
    from robustkit.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="--batch-size"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--threads"):
        RunConfig(threads=-1)
    with pytest.raises(ConfigError, match="--amp"):
        RunConfig(amp="fp8")
    with pytest.raises(InputError, match="does not exist"):
        RunConfig(weights=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        evaluate(batch_sise=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().batch_size = 3  # type: ignore[misc]


def test_resume_with_another_batch_size_attacks_every_sample(tmp_path, monkeypatch):
    model = _model()
    data = _data(model)
    common = dict(suite=SUITE, out=tmp_path, device="cpu", progress=False, report=False)
    reference = evaluate(model, data, name="ref", batch_size=6, **common)

    calls = {"n": 0}
    write = Store.write_outcomes

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # the first attack's batches are in, the second attack is half done
            raise KeyboardInterrupt
        return write(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_outcomes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, name="k", batch_size=6, **common)
    monkeypatch.setattr(Store, "write_outcomes", write)
    partial = _outcomes(tmp_path / "k")
    assert 0 < len(partial) < len(_outcomes(reference.run_dir))
    resumed = evaluate(model, data, name="k", batch_size=9, **common)  # chunks straddle the old ones
    assert _outcomes(resumed.run_dir) == _outcomes(reference.run_dir)
    assert [a["robust_accuracy"] for a in resumed.summary["attacks"]] == [
        a["robust_accuracy"] for a in reference.summary["attacks"]
    ]
    assert all(a["complete"] for a in resumed.summary["attacks"])


@dataclass(frozen=True, kw_only=True)
class TinyMetric(Attack):
    """A do-nothing attack that reports one new per-sample metric and one artifact per call; with
    ``oom_over`` it runs out of (simulated) CUDA memory on batches larger than that."""

    scale: float = 2.0
    oom_over: int = 0

    def run(self, model, x, y, *, target=None, generator=None) -> AttackResult:
        if self.oom_over and x.shape[0] > self.oom_over:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        with torch.no_grad():
            logits = model(x)
        margin = logits.gather(1, y[:, None])[:, 0] - logits.max(1).values
        return AttackResult(
            x_adv=x.clone(),
            success=logits.argmax(1) != y,
            metrics={"tiny_margin": self.scale * margin},
            artifacts={"seen": x.shape[0]},
        )


@pytest.fixture
def tiny_attack(monkeypatch):
    monkeypatch.setitem(ATTACKS._items, "tiny-metric", TinyMetric)
    return "tiny-metric"


def test_a_new_per_sample_metric_reaches_store_and_report(tmp_path, tiny_attack):
    model = _model()
    x, y = _data(model, 12)
    suite = {"name": "tiny", "attacks": [{"attack": tiny_attack, "scale": 3.0}]}
    res = evaluate(model, (x, y), suite, out=tmp_path, name="m", batch_size=5, device="cpu", progress=False)
    with torch.no_grad():
        logits = model(x)
    expected = 3.0 * (logits.gather(1, y[:, None])[:, 0] - logits.max(1).values)
    store = Store(res.run_dir / STORE_FILE)
    try:
        (attack,) = store.attacks()
        outcomes = [o for o in store.outcomes(attack["id"]) if o.attacked]
    finally:
        store.close()
    assert outcomes and all(
        o.metrics["tiny_margin"] == pytest.approx(float(expected[o.idx])) for o in outcomes
    )
    run = load_run(res.run_dir)
    view = attack_metrics(run)
    assert "tiny_margin" in view["names"]
    mean = sum(o.metrics["tiny_margin"] for o in outcomes) / len(outcomes)
    assert view["rows"][0]["metrics"]["tiny_margin"] == pytest.approx(mean)
    assert "tiny_margin" in render_html([run]) and "tiny_margin" in res.report.read_text()


def test_a_split_inside_a_split_keeps_every_part(tmp_path, tiny_attack):
    model = _model()
    x, y = model_data = _data(model, 8)
    y[:] = model(x).argmax(1)  # all clean-correct: the one batch of 8 is attacked as a whole
    suite = {"name": "tiny", "attacks": [{"attack": tiny_attack, "oom_over": 2}]}
    res = evaluate(model, model_data, suite, out=tmp_path, name="oom", batch_size=8, device="cpu",
                   progress=False, report=False)  # fmt: skip
    assert [b["from"] for b in res.summary["oom_backoffs"]] == [8, 4, 4]
    store = Store(res.run_dir / STORE_FILE)
    try:
        (attack,) = store.attacks()
        parts = store.artifacts(attack["id"], "seen")
        assert [(p.first_idx, p.part) for p in parts] == [(0, 0), (0, 1), (0, 2), (0, 3)]
        assert [p.value() for p in parts] == [2, 2, 2, 2]
        assert store.json_artifacts(attack["id"], "seen") == [2, 2, 2, 2]
        assert len(store.outcomes(attack["id"])) == 8
    finally:
        store.close()
    run = load_run(res.run_dir)
    assert [(a.part, a.value) for a in run.artifacts[attack["name"]]] == [(0, 2), (1, 2), (2, 2), (3, 2)]


def test_a_store_written_before_parts_is_read_with_parts(tmp_path):
    path = tmp_path / STORE_FILE
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE artifacts (attack_id INTEGER NOT NULL, first_idx INTEGER NOT NULL, key TEXT NOT NULL, "
        "kind TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (attack_id, first_idx, key))"
    )
    db.executemany(
        "INSERT INTO artifacts VALUES (1, ?, ?, 'json', ?)",
        [(0, "seen", b"4"), (0, "seen#2", b"3"), (8, "seen", b"5")],
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert [(a.first_idx, a.key, a.part, a.value()) for a in store.artifacts(1)] == [
            (0, "seen", 0, 4),
            (0, "seen", 1, 3),
            (8, "seen", 0, 5),
        ]
    finally:
        store.close()


def test_default_run_name_carries_the_weights_hash(tmp_path):
    """Other weights for the same model get a run of their own (the name ends in their hash); without a
    weights file the name is MODEL-DATA-SUITE as before."""
    from types import SimpleNamespace

    from robustkit.evaluation.runner import default_run_name

    weights = tmp_path / "w.safetensors"
    loaded = SimpleNamespace(run_name="resnet18-shapes")
    names = []
    for value in (0.0, 1.0):
        save_file({"w": torch.full((4,), value)}, str(weights))
        config = RunConfig(model="resnet18", weights=weights, suite=SUITE)
        names.append(default_run_name(config, loaded))
        assert names[-1] == f"resnet18-shapes-mini-{config.weights_sha256[:8]}"
    assert names[0] != names[1]
    assert default_run_name(RunConfig(model="resnet18", suite=SUITE), loaded) == "resnet18-shapes-mini"
