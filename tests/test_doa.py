"""DOA (Wu, Tong & Vorobeychik 2020): adversarial training against ROA, a defense backend next to PGD-AT.
Its inner attack is robustkit's ROA, its training examples differ from the batch inside one rectangle
per image only, and it trains through ``train_defense`` / ``robustkit train --defense doa``. (At 3 epochs
of 512 shapes, width 4, ROA accuracy was 3.9% for doa against 0.8% for standard training: too small a
budget to show the defense's gain, and 30 minutes on a shared CPU, so no test asserts it.)"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from robustkit.attacks.roa import ROA
from robustkit.defenses.base import DEFENSES
from robustkit.defenses.doa import DOA
from robustkit.defenses.loading import train_defense
from robustkit.training.settings import StepContext

TINY = {"epochs": 1, "train_size": 16, "batch_size": 16, "device": "cpu", "progress": False, "test_size": 16}


def test_doa_is_registered_and_its_inner_attack_is_roa():
    recipe = DEFENSES.create("doa")
    assert isinstance(recipe, DOA) and "doa" in DEFENSES.names()
    attack = recipe.inner_attack(recipe.settings)
    assert isinstance(attack, ROA)
    assert (attack.steps, attack.step_size) == (recipe.settings.steps, recipe.settings.step_size)
    assert (attack.height, attack.width, attack.search) == (recipe.height, recipe.width, recipe.search)
    assert not attack.early_stop and attack.eval_draws == 0 and not attack.eval_grid


def test_doa_examples_change_one_rectangle_per_image_and_leave_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 3)).train()  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = DEFENSES.create("doa")
    x, y = torch.randint(0, 256, (6, 3, 16, 16)) / 255, torch.arange(6) % 3  # 8-bit images
    ctx = StepContext(settings=replace(recipe.settings, steps=3), generator=torch.Generator().manual_seed(0))
    x_adv = recipe.examples(model, x, y, ctx)
    changed = (x_adv != x).any(1)  # (B, H, W)
    for i in range(6):
        rows, cols = changed[i].nonzero(as_tuple=True)
        assert len(rows) > 0 and len(rows) <= 4 * 4  # a 0.25 x 0.25 rectangle of a 16 x 16 image
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    loss = recipe.loss(model, x, y, ctx)
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in model.parameters())


def test_doa_trains_like_any_backend(tmp_path):
    info = train_defense("doa", "shapes", out_dir=tmp_path, width=4, **TINY)
    assert (tmp_path / "model.safetensors").is_file()
    assert info["settings"]["steps"] == 10 and 0.0 <= info["clean_test_accuracy"] <= 1.0
    assert info["prepared"]["departures"]
