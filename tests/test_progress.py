"""Progress that reaches the user, and interrupts that say what they saved.

- away from a terminal, a run logs one line per stage (the clean pass, each attack) and its sanity checks
  at INFO, which the CLI shows at its default level; on a terminal the bar alone; ``--quiet`` neither;
- training says, after its first steps, how long the rest will take;
- Ctrl-C inside the first epoch of a checkpointed training says what is saved, and it is true: the
  checkpoint it names exists at that step, or it says nothing was saved and there is no checkpoint.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

import robustkit
from robustkit.builtin.shapes import shapes
from robustkit.evaluation.progress import Progress
from robustkit.training.checkpoints import read_checkpoint
from robustkit.training.loop import about, cross_entropy, fit
from robustkit.training.seeding import fixed_seed
from robustkit.training.settings import TrainSettings

SUITE = {
    "name": "two",
    "attacks": [{"attack": "fgsm", "eps": "2/255"}, {"attack": "pgd", "eps": "2/255", "steps": 2}],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # two threads crawl on a loaded CPU


def tiny() -> nn.Module:
    with fixed_seed(5):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
        ).eval()


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_away_from_a_terminal_a_run_logs_one_line_per_stage(tmp_path, caplog):
    data = shapes("test", n=24)
    caplog.set_level(logging.INFO, logger="robustkit")
    robustkit.evaluate(tiny(), (data.x, data.y), SUITE, num_classes=10, out=tmp_path, name="r",
                       batch_size=8, report=False)  # fmt: skip
    lines = messages(caplog)
    stages = [m for m in lines if re.match(r"\[\d/3\] ", m)]
    assert [s.split(":")[0] for s in stages] == ["[1/3] clean", "[2/3] fgsm@2/255", "[3/3] pgd@2/255"]
    assert all("24 samples in" in s for s in stages), stages
    assert any(m.startswith("run r: 24 samples, 3 stages") for m in lines)
    done = next(m for m in lines if "sanity checks done" in m)
    assert re.search(r"done in [\d.]+ s: \d+ pass", done), done


def test_a_terminal_gets_the_bar_and_quiet_gets_neither(caplog):
    caplog.set_level(logging.INFO, logger="robustkit")
    with Progress("r", 2, 4, show=True, lines=False) as bar:
        assert not bar.bar.disable
        for stage in ("clean", "pgd"):
            bar.set_description(stage)
            bar.update(4)
    with Progress("q", 2, 4, show=False) as quiet:
        assert quiet.bar.disable and not quiet.lines
        quiet.set_description("clean")
        quiet.update(4)
    assert not [m for m in messages(caplog) if "] " in m or "stages" in m]


def test_an_interrupted_stage_is_not_reported_as_finished(caplog):
    caplog.set_level(logging.INFO, logger="robustkit")
    with pytest.raises(KeyboardInterrupt), Progress("r", 2, 4, show=True, lines=True) as bar:
        bar.set_description("clean")
        bar.update(4)
        bar.set_description("pgd")
        bar.update(1)
        raise KeyboardInterrupt
    stages = [m for m in messages(caplog) if m.startswith("[")]
    assert stages == [stages[0]] and stages[0].startswith("[1/2] clean: 4 samples")


class Interrupt:
    """A loss that presses Ctrl-C at step ``at`` (0-based count of calls)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, model, x, y, ctx):
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.calls += 1
        return cross_entropy(model, x, y, ctx)


SETTINGS = TrainSettings(epochs=2, batch_size=8, train_size=None, lr=1e-3)


def train_until(at: int, out, every: int | None, caplog) -> str:
    caplog.set_level(logging.INFO, logger="robustkit")
    with pytest.raises(KeyboardInterrupt):
        fit(tiny().train(), shapes("train", n=64), SETTINGS, device=torch.device("cpu"), loss=Interrupt(at),
            out_dir=out, identity={"t": 1}, progress=False, checkpoint_every=every, desc="training tiny")  # fmt: skip
    return next(m for m in messages(caplog) if "interrupted" in m)


def test_ctrl_c_before_the_first_checkpoint_says_nothing_is_saved_and_nothing_is(tmp_path, caplog):
    said = train_until(3, tmp_path, None, caplog)
    assert "step 3 of 16, before its first checkpoint: nothing of it is saved" in said, said
    assert "--checkpoint-every" in said and "every 10 min" in said
    assert read_checkpoint(tmp_path) is None


def test_ctrl_c_in_the_first_epoch_names_the_checkpoint_it_kept(tmp_path, caplog):
    said = train_until(5, tmp_path, 2, caplog)
    assert "step 5 of 16: its checkpoint at step 4 (4 steps into epoch 1)" in said, said
    assert read_checkpoint(tmp_path)[1]["step"] == 4
    caplog.clear()
    state = fit(tiny().train(), shapes("train", n=64), SETTINGS, device=torch.device("cpu"), out_dir=tmp_path,
                identity={"t": 1}, progress=False, checkpoint_every=2, desc="training tiny")  # fmt: skip
    assert state["step"] == 16
    assert any("resuming training tiny from epoch 0, step 4" in m for m in messages(caplog))


def test_an_unsaved_training_says_it_starts_over(caplog):
    said = train_until(2, None, None, caplog)
    assert "step 2 of 16: it keeps no checkpoint and starts over on its next use" in said


def test_training_says_how_long_it_will_take_after_its_first_steps(caplog):
    caplog.set_level(logging.INFO, logger="robustkit")
    fit(tiny().train(), shapes("train", n=64), SETTINGS, device=torch.device("cpu"), progress=False,
        desc="training tiny")  # fmt: skip
    said = [m for m in messages(caplog) if "to go" in m]
    assert len(said) == 1 and re.match(
        r"training tiny: 16 steps, about \d+ s to go \([\d.]+ s per step", said[0]
    )


def test_about_reads_like_a_person():
    assert [about(s) for s in (0.2, 40, 600, 5 * 3600)] == ["1 s", "40 s", "10 min", "5.0 h"]


def test_cli_ctrl_c_in_train_claims_nothing_it_did_not_save(monkeypatch, capsys):
    from robustkit import cli
    from robustkit.defenses import loading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "train_defense", interrupted)
    assert cli.main(["train", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert "saved" in err and "everything" not in err and "is saved" not in err
