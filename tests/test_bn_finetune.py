"""BN-only adversarial fine-tuning and its controls on torchvision's ResNet-18: what trains, what the
random-features control gets, and which architectures each recipe accepts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustkit.defenses.backbones import DataSpec
from robustkit.defenses.base import DEFENSES
from robustkit.defenses.bn_finetune import bn_parameters
from robustkit.defenses.loading import train_defense
from robustkit.errors import ConfigError

torch.set_num_threads(1)

SPEC = DataSpec("shapes", 10, (3, 32, 32))
R18 = "torchvision:resnet18"
TINY = {"epochs": 1, "train_size": 32, "batch_size": 16, "device": "cpu", "progress": False, "test_size": 32}


def bn_affine_names(model: nn.Module) -> set[str]:
    return {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names) -> set[str]:
    return {n for n in names if not torch.equal(before[n], after[n])}


def test_bn_random_trains_harder_than_the_fine_tuning():
    """The random-features control trains 6x the fine-tuning's epochs, with the classifier, a higher lr and
    a clean phase before its PGD-AT (Frankle et al.: BN affine parameters alone need a long budget; PGD-AT
    from the first step left them at chance here), still 3x the fine-tuning's adversarial epochs; the
    full-AT reference as many adversarial epochs as standard training plus the fine-tuning."""
    ft, rnd, full, std = (DEFENSES.create(n) for n in ("bn-finetune", "bn-random", "pgd-at", "standard"))
    assert rnd.settings.epochs >= 6 * ft.settings.epochs and rnd.settings.lr > ft.settings.lr
    assert 0 < rnd.settings.clean_phase < 1 and ft.settings.clean_phase == full.settings.clean_phase == 0
    assert rnd.settings.epochs * (1 - rnd.settings.clean_phase) >= 3 * ft.settings.epochs
    assert full.settings.epochs >= std.settings.epochs + ft.settings.epochs
    assert not rnd.pretrained and rnd.classifier and ft.pretrained and not ft.classifier
    for r in (ft, rnd, full):
        assert "budgets" in " ".join(r.departures) or "scale" in " ".join(r.departures)


def test_bn_random_trains_exactly_the_bn_affine_parameters_and_classifier_of_a_random_resnet18(tmp_path):
    recipe = DEFENSES.create("bn-random")
    start = recipe.build(SPEC, recipe.settings.overridden(arch=R18))
    assert {n for n, p in start.named_parameters() if any(p is q for q in bn_parameters(start))} == (
        bn_affine_names(start)
    )
    expected = bn_affine_names(start) | {"model.fc.weight", "model.fc.bias"}
    info = train_defense("bn-random", "shapes", out_dir=tmp_path, arch=R18, **TINY)
    trained = load_file(str(tmp_path / "model.safetensors"))
    names = [n for n, _ in start.named_parameters()]
    assert changed(start.state_dict(), trained, names) == expected
    assert info["prepared"]["init"] == "random" and 0.0 <= info["clean_test_accuracy"] <= 1.0


def test_bn_finetune_fc_on_resnet18_starts_from_a_standard_resnet18(tmp_path):
    std = train_defense("standard", "shapes", out_dir=tmp_path / "std", arch=R18, **TINY)
    assert std["settings"]["arch"] == R18
    init = tmp_path / "std" / "model.safetensors"
    start = load_file(str(init))
    train_defense("bn-finetune-fc", "shapes", out_dir=tmp_path / "ft", arch=R18, init=init, **TINY)
    trained = load_file(str(tmp_path / "ft" / "model.safetensors"))
    model = DEFENSES.create("bn-finetune").build(
        SPEC, DEFENSES.create("bn-finetune").settings.overridden(arch=R18)
    )
    names = [n for n, _ in model.named_parameters()]
    assert changed(start, trained, names) == bn_affine_names(model) | {"model.fc.weight", "model.fc.bias"}


def test_bn_finetune_refuses_a_standard_network_of_another_architecture(tmp_path):
    from robustkit.defenses.backbones import bn_resnet

    with pytest.raises(ConfigError, match="same --arch"):
        train_defense(
            "bn-finetune", "shapes", out_dir=tmp_path, arch=R18, load=lambda name: bn_resnet(SPEC), **TINY
        )


@pytest.mark.parametrize("name", ["bn-finetune", "bn-finetune-fc", "bn-random"])
def test_a_network_without_batchnorm_is_a_config_error(name, tmp_path):
    with pytest.raises(ConfigError, match="BatchNorm"):
        train_defense(name, "shapes", out_dir=tmp_path, arch="timm:rk_nf_resnet_small", **TINY)


def test_pgd_at_trains_one_tiny_epoch_on_resnet18(tmp_path):
    info = train_defense("pgd-at", "shapes", out_dir=tmp_path, arch=R18, **TINY)
    assert info["cost"]["steps"] == 2 and info["settings"]["arch"] == R18
    assert info["prepared"]["departures"] == list(DEFENSES.create("pgd-at").departures)
    # ... and evaluates: the trained ResNet-18 under a short PGD
    from robustkit.attacks import create_attack
    from robustkit.defenses.loading import load_weights
    from robustkit.training.data import load_split

    recipe = DEFENSES.create("pgd-at")
    model = load_weights(
        recipe.build(SPEC, recipe.settings.overridden(arch=R18)), tmp_path / "model.safetensors"
    )
    test = load_split("shapes", "test", 8)
    x = torch.stack([test[i][0] for i in range(8)])
    y = torch.tensor([int(test[i][1]) for i in range(8)])
    result = create_attack("pgd", eps=8 / 255, steps=2).run(
        model.eval(), x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float((result.x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) == y).sum() <= (model(x).argmax(1) == y).sum() + 1
