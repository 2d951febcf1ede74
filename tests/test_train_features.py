"""The researcher's training knobs of ``fit``: schedules, Nesterov, label smoothing, augmentation, mixed
precision, checkpoints within an epoch, and the architecture travelling with the weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robustkit.builtin.shapes import shapes
from robustkit.defenses.adversarial import adversarial_batch
from robustkit.defenses.base import DEFENSES, DefenseRecipe, register_defense
from robustkit.defenses.baselines import madry_loss
from robustkit.defenses.loading import load_defense, train_defense
from robustkit.errors import ConfigError
from robustkit.training.augment import PAD, augment_batch
from robustkit.training.checkpoints import read_checkpoint
from robustkit.training.loop import cross_entropy, fit
from robustkit.training.schedule import WarmupCosine, cosine_lr_at, lr_at, make_optimizer, schedule_for
from robustkit.training.seeding import fixed_seed
from robustkit.training.settings import StepContext, TrainSettings

torch.set_num_threads(1)
CPU = torch.device("cpu")


def tiny() -> nn.Module:
    with fixed_seed(5):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
        )


def test_cosine_schedule_and_nesterov_flag():
    assert isinstance(schedule_for(TrainSettings(schedule="cosine", warmup=0.2)), WarmupCosine)
    total, peak = 20, 0.4
    lrs = [cosine_lr_at(s, total, peak, 0.2) for s in range(total)]
    assert lrs[:4] == [peak * (s + 1) / 4 for s in range(4)]  # the same linear warm-up as lr_at
    assert lrs[4] == peak and lrs[4 + 8] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False)) and 0 < lrs[-1] < 0.01 * peak
    assert lrs[10] > lr_at(10, total, peak, 0.2)  # cosine stays higher than linear in the first half
    params = list(nn.Linear(2, 2).parameters())
    assert make_optimizer(params, TrainSettings(optimizer="sgd")).param_groups[0]["nesterov"]
    plain = make_optimizer(params, TrainSettings(optimizer="sgd", nesterov=False, weight_decay=1e-3))
    assert not plain.param_groups[0]["nesterov"] and plain.param_groups[0]["weight_decay"] == 1e-3


def test_label_smoothing_in_the_default_loss():
    model = tiny().eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ctx = StepContext(settings=TrainSettings(label_smoothing=0.2), generator=torch.Generator())
    smoothed = cross_entropy(model, x, y, ctx)
    torch.testing.assert_close(smoothed, F.cross_entropy(model(x), y, label_smoothing=0.2))
    assert not torch.allclose(smoothed, cross_entropy(model, x, y, None))


def test_augmentation_flip_crop_properties():
    x = torch.rand(6, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    flipped = augment_batch(x, "flip", g())
    for i in range(6):  # each sample is itself or its mirror image
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert not torch.equal(flipped, x)
    out = augment_batch(x, "flip-crop", g())
    for i in range(6):  # a crop of the zero-padded image, at some offset, maybe mirrored
        padded = F.pad(x[i], (PAD,) * 4)
        crops = [padded[:, a : a + 8, b : b + 8] for a in range(2 * PAD + 1) for b in range(2 * PAD + 1)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    # a process holding rows 2:4 of the global batch gets exactly those rows' augmentation
    torch.testing.assert_close(augment_batch(x[2:4], "flip-crop", g(), rows=slice(2, 4), total=6), out[2:4])
    # video: every frame of a clip gets the same flip and crop
    clip = torch.rand(3, 3, 4, 8, 8)
    aug = augment_batch(clip, "flip-crop", g())
    for t in range(4):
        torch.testing.assert_close(aug[:, :, t], augment_batch(clip[:, :, t], "flip-crop", g()))


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda():
    train = shapes("train", n=32)
    settings = TrainSettings(epochs=1, batch_size=16, train_size=None, amp="bf16")
    seen = []
    model = tiny()
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    state = fit(model, train, settings, device=CPU, progress=False)
    assert seen and all(d == torch.bfloat16 for d in seen) and math.isfinite(state["last_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        fit(tiny(), train, TrainSettings(epochs=1, batch_size=16, amp="fp16"), device=CPU, progress=False)


class Stop:
    after: int | None = None
    calls = 0


def stoppable_loss(model, x, y, ctx):
    Stop.calls += 1
    if Stop.after is not None and Stop.calls > Stop.after:
        raise KeyboardInterrupt
    return madry_loss(model, x, y, ctx)


class Stoppable(DefenseRecipe):
    def loss(self, model, x, y, ctx):
        return stoppable_loss(model, x, y, ctx)


if "test-stoppable" not in DEFENSES:
    register_defense(Stoppable(
        name="test-stoppable", description="PGD-AT, 1 attack step, interruptible (tests only)",
        settings=TrainSettings(epochs=2, steps=1, step_size=4 / 255, width=4, batch_size=16),
    ))  # fmt: skip

TINY = {"train_size": 64, "device": "cpu", "progress": False, "test_size": 16}
KNOBS = {"augment": "flip-crop", "schedule": "cosine", "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}


def test_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    Stop.after, Stop.calls = None, 0
    straight = train_defense("test-stoppable", out_dir=tmp_path / "a", **TINY, **KNOBS)
    Stop.after, Stop.calls = 6, 0  # killed in the 3rd step of epoch 2 (4 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train_defense("test-stoppable", out_dir=tmp_path / "b", checkpoint_every=1, **TINY, **KNOBS)
    _, state = read_checkpoint(tmp_path / "b")
    assert state["epochs_done"] == 1 and state["step"] == 6 and len(state["partial"]["losses"]) == 2
    Stop.after = None
    resumed = train_defense("test-stoppable", out_dir=tmp_path / "b", checkpoint_every=3, **TINY, **KNOBS)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["cost"]["steps"] == straight["cost"]["steps"] == 8


def test_torchvision_architecture_travels_with_the_weights(tmp_path):
    info = train_defense(
        "standard", out_dir=tmp_path, arch="torchvision:resnet18", epochs=1, train_size=32, batch_size=16,
        device="cpu", progress=False, test_size=16,
    )  # fmt: skip
    assert info["settings"]["arch"] == "torchvision:resnet18"
    import torchvision

    defense = load_defense(f"standard:{tmp_path / 'model.safetensors'}", dataset="shapes")
    assert isinstance(defense.model.model, torchvision.models.ResNet)
    assert defense.info["arch"] == "torchvision:resnet18"
    trained = DEFENSES.create("standard").build(
        defense_spec(defense), TrainSettings(arch="torchvision:resnet18")
    )
    weights = load_file(str(tmp_path / "model.safetensors"))
    trained.load_state_dict(weights)
    default = DEFENSES.create("standard")
    with pytest.raises(RuntimeError):  # the recipe's own network could not take these weights
        default.build(defense_spec(defense), default.settings).load_state_dict(weights)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(defense.model(x), trained.eval()(x), rtol=0, atol=0)


def defense_spec(defense):
    from robustkit.training.data import DataSpec

    return DataSpec.from_dict(defense.info["spec"])


def test_clean_phase_then_eps_ramp():
    """``clean_phase``: clean batches (the attack skipped) for that share of the steps, then the eps ramp."""
    s = TrainSettings(eps=8 / 255, step_size=2 / 255, clean_phase=0.5, eps_warmup=0.25)
    budget = {
        f: StepContext(s, torch.Generator(), fraction=f).budget() for f in (0.25, 0.5, 0.625, 0.75, 1.0)
    }
    assert budget[0.25] == budget[0.5] == (0.0, 0.0)
    assert budget[0.625] == pytest.approx((4 / 255, 1 / 255))
    assert budget[0.75] == budget[1.0] == pytest.approx((8 / 255, 2 / 255))
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    during = StepContext(s, torch.Generator().manual_seed(0), fraction=0.4)
    assert adversarial_batch(tiny(), x, y, during) is x  # no attack, no random start drawn
    after = adversarial_batch(tiny(), x, y, StepContext(s, torch.Generator().manual_seed(0), fraction=0.9))
    assert 0 < (after - x).abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(ConfigError, match="clean_phase"):
        TrainSettings(clean_phase=0.8, eps_warmup=0.4)
