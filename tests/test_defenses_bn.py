"""BN-only adversarial fine-tuning changes exactly the intended parameters."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from robustkit.defenses.backbones import DataSpec, bn_resnet
from robustkit.defenses.base import DEFENSES
from robustkit.defenses.bn_finetune import bn_parameters
from robustkit.defenses.loading import train_defense
from robustkit.models.checkpoint import save_weights

torch.set_num_threads(1)

SPEC = DataSpec("shapes", 10, (3, 32, 32))


def bn_names(model: nn.Module, classifier: bool = False) -> set[str]:
    names = set()
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) or (classifier and mod_name.endswith("fc")):
            names |= {f"{mod_name}.weight", f"{mod_name}.bias"}
    return names


def test_bn_parameters_selects_the_affine_parameters_only():
    model = bn_resnet(SPEC, 4)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for p in bn_parameters(model)} == bn_names(model)
    assert {by_id[id(p)] for p in bn_parameters(model, classifier=True)} == bn_names(model, classifier=True)
    assert len(bn_names(model)) < len(by_id)


def _changes(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], names: list[str]) -> set[str]:
    return {n for n in names if not torch.equal(start[n], trained[n])}


def _fine_tune(name: str, tmp_path, init: bool) -> tuple[dict, dict, list[str], nn.Module]:
    settings = DEFENSES.create(name).settings
    start = bn_resnet(SPEC, settings.width, seed=3) if init else DEFENSES.create(name).build(SPEC, settings)
    path = tmp_path / "standard.safetensors"
    save_weights(start.model, path)  # the inner network's state dict, as a user would save it
    train_defense(
        name,
        "shapes",
        out_dir=tmp_path / name,
        epochs=1,
        train_size=32,
        batch_size=16,
        device="cpu",
        progress=False,
        init=path if init else None,
        test_size=32,
    )
    trained = load_file(str(tmp_path / name / "model.safetensors"))
    params = [n for n, _ in start.named_parameters()]
    return {k: v.detach() for k, v in start.state_dict().items()}, trained, params, start


def test_bn_finetune_changes_only_bn_affine_parameters(tmp_path):
    start, trained, params, model = _fine_tune("bn-finetune", tmp_path, init=True)
    assert _changes(start, trained, params) == bn_names(model)
    # running statistics are buffers and adapt to the adversarial data, as in any BN training pass
    assert not torch.equal(start["model.stem.1.running_mean"], trained["model.stem.1.running_mean"])


def test_bn_finetune_fc_also_trains_the_classifier(tmp_path):
    start, trained, params, model = _fine_tune("bn-finetune-fc", tmp_path, init=True)
    assert _changes(start, trained, params) == bn_names(model, classifier=True)


def test_bn_random_trains_bn_on_frozen_random_weights(tmp_path):
    start, trained, params, model = _fine_tune("bn-random", tmp_path, init=False)
    assert _changes(start, trained, params) == bn_names(
        model, classifier=True
    )  # the control's classifier too
