"""The seed defenses at the user's scale, through the CLI: ABNN, NoFrost and BN-only fine-tuning train on
the built-in images in a torchvision ResNet-18 (NoFrost in timm's own NF-ResNet-26, the network family it
is defined on; its BN-AT control in the ResNet-18), ABNN on the built-in clips in a 3-D ResNet-18; each
then loads from its weights alone (the architecture travels in the metadata) and is attacked by
``robustkit evaluate``. Tiny budgets: this checks the plumbing, ``benchmarks/defenses_claims.py`` the
figures."""

from __future__ import annotations

import json

import pytest

from robustkit.cli import main

TRAIN = ["--epochs", "1", "--train-size", "16", "--batch-size", "8", "--no-progress", "--device", "cpu"]

IMAGE_SUITE = "name: tiny\nattacks:\n  - attack: pgd\n    norm: Linf\n    eps: 8/255\n    steps: 2\n"
VIDEO_SUITE = (
    "name: tiny-video\nattacks:\n  - attack: video-pgd\n    norm: Linf\n    eps: 4/255\n"
    "    step_size: 1/255\n    steps: 2\n"
)


def _train(tmp_path, defense: str, data: str, arch: str, *extra: str) -> str:
    out = tmp_path / defense
    argv = ["train", "--defense", defense, "--data", data, "--arch", arch, "--out", str(out), *TRAIN]
    assert main([*argv, *extra]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["settings"]["arch"] == arch  # what --defense NAME:weights rebuilds
    return str(out / "model.safetensors")


def _evaluate(tmp_path, defense: str, weights: str, data: str, suite: str) -> dict:
    recipe = tmp_path / "suite.yaml"
    recipe.write_text(suite)
    name = f"{defense}-{data}"
    argv = ["evaluate", "--defense", f"{defense}:{weights}", "--data", data, "--suite", str(recipe)]
    argv += ["--limit", "8", "--batch-size", "8", "--out", str(tmp_path / "runs"), "--name", name]
    assert main([*argv, "--quiet"]) == 0
    (run,) = (tmp_path / "runs").glob(f"{name}-*/summary.json")  # <name>-<defense> per defense
    summary = json.loads(run.read_text())
    assert summary["complete"] and 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1
    return summary


@pytest.mark.parametrize(
    "defense, data, arch",
    [
        ("abnn", "shapes", "torchvision:resnet18"),
        ("nofrost", "shapes", "timm:nf_resnet26"),
        ("bn-at", "shapes", "torchvision:resnet18"),
        ("abnn", "shapes-video", "video:r3d_18"),
    ],
)
def test_a_seed_defense_trains_and_evaluates_in_a_paper_architecture(tmp_path, defense, data, arch):
    weights = _train(tmp_path, defense, data, arch)
    _evaluate(tmp_path, defense, weights, data, VIDEO_SUITE if data.endswith("video") else IMAGE_SUITE)


def test_bn_only_fine_tuning_of_a_torchvision_resnet18(tmp_path):
    standard = _train(tmp_path, "standard", "shapes", "torchvision:resnet18")
    weights = _train(tmp_path, "bn-finetune", "shapes", "torchvision:resnet18", "--init", standard)
    _evaluate(tmp_path, "bn-finetune", weights, "shapes", IMAGE_SUITE)
