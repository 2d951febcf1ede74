"""Universal attacks (one perturbation for all inputs, trained on a training split): universal framing
and universal flicker fool held-out clips better than a random perturbation of the same budget, their
training cost is recorded, and a run counts a universal attack's training in its row and timing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.attacks.base import Counter
from robustkit.builtin.shapes_video import shapes_video
from robustkit.builtin.zoo import load_zoo_model
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny clips: see conftest.one_thread


def gens(n: int, seed: int = 0):
    return sample_generators(seed, range(n))


def fooled(model, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) != y).float().mean())


# ----------------------------------------------------------------------------- framing
def test_universal_framing_fools_heldout_clips_better_than_a_random_frame():
    """Zajac et al.: one border for every clip, trained on the train split of the built-in videos,
    against random borders of the same width (the same budget: every border pixel anywhere in [0, 1])."""
    model = load_zoo_model("shapes-video-r3d", progress=False)
    train, test = shapes_video("train", n=64), shapes_video("test", n=32)
    attack = create_attack("framing", universal=True, train_steps=30, learning_rate=0.1, batch_size=16)
    fitted = attack.fit(model, train.x, train.y, generator=torch.Generator().manual_seed(0))
    assert fitted.frame.shape == (1, 3, 8, 32, 32) and attack.frame is None
    result = fitted(model, test.x, test.y, generator=gens(32))
    universal = fooled(model, result.x_adv, test.y)
    g = torch.Generator().manual_seed(1)
    random = max(
        fooled(model, fitted.replace(frame=torch.rand(fitted.frame.shape, generator=g))(model, test.x, test.y).x_adv,
               test.y)
        for _ in range(3)
    )  # fmt: skip
    assert universal >= random + 0.15, (universal, random)
    # the same frame around every clip: the border of every adversarial clip is identical
    border = result.x_adv - test.x != 0
    assert torch.equal(result.x_adv[0][border[0]], result.x_adv[5][border[0]])
    cost = fitted.training_cost
    assert cost.steps == 30 and cost.backward == 30 and cost.forward == 30 and cost.seconds > 0
    assert cost.queries == 30 * 16


# ----------------------------------------------------------------------------- flicker
def colour_clips(n: int, seed: int, frames: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes told apart by a faint temporal colour pattern (frequency 1 or 2, red, green or
    blue) over a noise background: data on which a flicker matters."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 + 0.4 * torch.rand(n, 3, frames, 8, 8, generator=g)
    t = torch.arange(frames).float()
    for c in range(4):
        pattern = 0.12 * torch.cos(2 * math.pi * (c % 2 + 1) * t / frames)
        x[y == c, c // 2 + c % 2] += pattern[None, :, None, None]
    return x.clamp(0, 1), y


class FrameMeans(nn.Module):
    """A linear classifier of the per-frame colour means."""

    def __init__(self, frames: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * frames, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(3, 4)).flatten(1) - 0.5)


def colour_model(x: torch.Tensor, y: torch.Tensor) -> FrameMeans:
    """A FrameMeans model trained on colour clips ``x``, ``y``."""
    torch.manual_seed(0)
    model = FrameMeans()
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval().requires_grad_(False)


def test_universal_flicker_fools_heldout_clips_better_than_a_random_flicker():
    """Pony et al.'s universal flicker, played from a random frame on each held-out clip, against random
    flickers at the same L-inf bound (every offset at +-eps, the largest a random one can be)."""
    x_train, y_train = colour_clips(256, 0)
    x_test, y_test = colour_clips(64, 1)
    model = colour_model(x_train, y_train)
    assert fooled(model, x_test, y_test) == 0
    attack = create_attack(
        "flicker", universal=True, eps=0.06, train_steps=40, learning_rate=0.01, batch_size=32
    )
    fitted = attack.fit(model, x_train, y_train, generator=torch.Generator().manual_seed(0))
    assert fitted.flicker.shape == (1, 3, 8, 1, 1) and fitted.flicker.abs().max() <= 0.06 + 1e-6
    result = fitted(model, x_test, y_test, generator=gens(64))
    universal = fooled(model, result.x_adv, y_test)
    g = torch.Generator().manual_seed(1)
    random = max(
        fooled(model, fitted.replace(flicker=(torch.randint(0, 2, (1, 3, 8, 1, 1), generator=g) * 2 - 1) * 0.06)(
            model, x_test, y_test, generator=gens(64)).x_adv, y_test)
        for _ in range(4)
    )  # fmt: skip
    assert universal >= random + 0.1, (universal, random)
    assert len(result.artifacts["universal_flicker"]) == 8  # the flicker as a colour sequence (T, C)
    # every clip plays the same flicker, from its own starting frame: its per-frame offsets (away from
    # the [0, 1] box) are a cyclic shift of the universal one
    offsets = (result.x_adv - x_test)[:, :, :, 2, 2]
    flicker = fitted.flicker[0, :, :, 0, 0]
    for i in range(4):
        assert any(torch.allclose(offsets[i], flicker.roll(-s, 1), atol=1e-5) for s in range(8)), i


def test_universal_flicker_restarts_keep_the_best_flicker_on_the_training_split(monkeypatch):
    """With ``restarts`` the flicker is trained that many times (the first from zero, the others from
    random flickers in the bound), each is scored on the training split, the best is kept, and the
    training cost counts every restart and the scoring passes."""
    from robustkit.attacks.flicker import Flicker

    x, y = colour_clips(64, 0)
    model = colour_model(x, y)
    starts, trained = [], []
    train = Flicker._train

    def spy(self, model, delta, *args):
        starts.append(delta.clone())
        trained.append(train(self, model, delta, *args))
        return trained[-1]

    monkeypatch.setattr(Flicker, "_train", spy)
    attack = create_attack("flicker", universal=True, eps=0.06, train_steps=3, learning_rate=0.01,
                           batch_size=16, restarts=3, random_shift=False)  # fmt: skip
    fitted = attack.fit(model, x, y, generator=torch.Generator().manual_seed(0))
    assert len(trained) == 3 and starts[0].abs().max() == 0
    assert all(0 < s.abs().max() <= 0.06 for s in starts[1:]) and not torch.equal(starts[1], starts[2])
    zero = torch.zeros(64, dtype=torch.long)
    values = [attack.training_value(model, d, x, y, zero, Counter()) for d in trained]
    assert len(set(values)) == 3  # three different flickers: the choice is not a tie
    assert torch.equal(fitted.flicker, trained[values.index(max(values))])
    cost = fitted.training_cost
    assert cost.steps == 9 and cost.backward == 9 and cost.forward == 9 + 3 * 4


@pytest.mark.slow
def test_the_suites_universal_flicker_fools_heldout_builtin_clips_more_than_random_flickers():
    """On the built-in video model, which barely reacts to a flicker (benchmarks/results/video_attacks.md),
    the video suite's universal flicker fools more held-out clips, and moves their mean margin further,
    than any of four random +-eps flickers. About a minute on one core."""
    from pathlib import Path

    from robustkit.evaluation.suite import load_suite
    from robustkit.functional.losses import cw_margin

    suite = load_suite(str(Path(__file__).parents[1] / "attacks" / "video.yaml"))
    attack = {e.name: e.attack for e in suite.entries}["flicker-universal"]
    model = load_zoo_model("shapes-video-r3d", progress=False)
    train, test = shapes_video("train", n=256), shapes_video("test", n=200)
    fitted = attack.fit(model, train.x, train.y, generator=torch.Generator().manual_seed(0))

    def scores(flicker: torch.Tensor) -> tuple[float, float]:
        x_adv = fitted.replace(flicker=flicker)(model, test.x, test.y, generator=gens(200)).x_adv
        with torch.no_grad():
            margin = float(cw_margin(model(x_adv), test.y).mean())
        return fooled(model, x_adv, test.y), margin

    g = torch.Generator().manual_seed(1)
    randoms = [
        scores((torch.randint(0, 2, (1, 3, 8, 1, 1), generator=g) * 2 - 1) * attack.eps) for _ in range(4)
    ]
    universal = scores(fitted.flicker)
    assert universal[0] > max(r[0] for r in randoms), (universal, randoms)
    assert universal[1] > max(r[1] for r in randoms), (universal, randoms)


def test_universal_video_attacks_check_their_configuration_and_inputs():
    with pytest.raises(ConfigError, match="target_mode"):
        create_attack("flicker", universal=True, targeted=True)  # the default target_mode is 'random'
    with pytest.raises(ConfigError):
        create_attack("framing", universal=True, train_steps=0)
    with pytest.raises(ConfigError, match="restarts"):
        create_attack("flicker", universal=True, restarts=0)
    model = FrameMeans()
    x, y = colour_clips(8, 0)
    fitted = create_attack("flicker", universal=True, train_steps=1, batch_size=4).fit(model, x, y)
    with pytest.raises(ConfigError, match="frames"):
        fitted(model, x[:, :, :4], y)
    # a targeted universal flicker trains on the clips of the other classes only, towards its class
    targeted = create_attack(
        "flicker", universal=True, targeted=True, target_mode=2, train_steps=2, batch_size=4
    )
    fit = targeted.fit(model, x, y)
    assert fit.training_cost.queries == 2 * 4
    result = fit(model, x, y)
    assert torch.equal(result.metrics.get("target", torch.full_like(y, 2)), torch.full_like(y, 2))


# ----------------------------------------------------------------------------- honest cost
def test_a_run_counts_the_universal_patch_training_in_its_row_and_timing(tmp_path):
    """A run of the physical suite's patch: the attack's row and the report's timing include the patch's
    training (its backward passes and its time), not only the time of pasting it."""
    from robustkit import evaluate
    from robustkit.report.load import load_run
    from robustkit.report.sections import timing

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 10)).eval()  # fmt: skip
    suite = {"name": "p", "attacks": [{"attack": "patch", "max_iter": 6, "batch_size": 4, "train_samples": 16,
                                       "eot": {"n_samples": 2}, "eval_draws": 0, "eval_grid": False}]}  # fmt: skip
    r = evaluate(model, "shapes", suite, out=tmp_path, name="p", limit=8, report=False, progress=False)
    (row,) = [a for a in r.summary["attacks"] if a["attack"] == "patch"]
    assert row["training"]["backward"] == 6 and row["training"]["training_steps"] == 6
    assert row["counters"]["backward"] >= 6 and row["seconds"] >= row["training"]["seconds"] > 0
    stage = next(s for s in timing(load_run(r.run_dir))["rows"] if s["stage"] == row["name"])
    assert stage["counters"]["backward"] >= 6 and stage["seconds"] >= row["training"]["seconds"]
    assert stage["samples"] == 8  # the evaluated samples: the training adds none


def test_per_clip_framing_and_flicker_are_not_fitted():
    """Framing and flicker are per clip unless ``universal``: the runner fits neither (no training split,
    no training cost), and their ``fit`` returns them unchanged."""
    from robustkit.attacks.universal import is_universal

    for name in ("framing", "flicker"):
        attack = create_attack(name)
        assert not is_universal(attack) and is_universal(attack.replace(universal=True))
        assert attack.fit(FrameMeans(), *colour_clips(4, 0)) is attack
    assert is_universal(create_attack("patch")) and is_universal(create_attack("video-patch"))
    assert not is_universal(create_attack("eyeglass")) and not is_universal(create_attack("sticker"))


def test_the_video_suite_has_universal_framing_and_flicker():
    from pathlib import Path

    from robustkit.attacks.universal import is_universal
    from robustkit.evaluation.suite import load_suite

    suite = load_suite(str(Path(__file__).parents[1] / "attacks" / "video.yaml"))
    by_name = {e.name: e.attack for e in suite.entries}
    assert not is_universal(by_name["framing"]) and not is_universal(by_name["flicker"])
    assert is_universal(by_name["framing-universal"]) and is_universal(by_name["flicker-universal"])
    assert by_name["framing-universal"].width == 10 and by_name["flicker-universal"].eps == 0.2
    # Pony et al.'s lambda = 1 over a batch of 16 (their loss summed, penalties averaged), CE, restarts
    flicker = by_name["flicker-universal"]
    assert flicker.regularization == 1 / 16 and flicker.batch_size == 16
    assert flicker.loss == "ce" and flicker.restarts == 4
    salt = by_name["salt-pepper"]
    assert salt.pixels == 100 and salt.reference_size == 112 and salt.max_fraction == 1.0
