"""``robustkit train`` for researchers: every overridable setting as a flag, a user's image-folder data,
and bad values refused with exit code 2 naming the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustkit.cli import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("circle", "square")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(8):
                img = rng.integers(0, 90, (36, 40, 3), dtype=np.uint8) + 120 * c
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    manifest = root / "mine.yaml"
    manifest.write_text(f"name: mine\nformat: imagefolder\nroot: {root}\npreprocessing: {{size: 32}}\n")
    return manifest


def test_every_setting_from_the_command_line_on_an_image_folder(folder, tmp_path, capsys):
    argv = ["train", "--defense", "standard", "--data", str(folder), "--out", str(tmp_path / "m")]
    argv += [
        "--arch",
        "small-resnet",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--train-size",
        "16",
    ]
    argv += ["--lr", "0.02", "--optimizer", "sgd", "--no-nesterov", "--weight-decay", "1e-4"]
    argv += ["--schedule", "cosine", "--warmup", "0.25", "--label-smoothing", "0.1", "--drop-path", "0"]
    argv += ["--augment", "flip-crop", "--amp", "bf16", "--attack-mode", "eval", "--checkpoint-every", "1"]
    argv += ["--device", "cpu", "--no-progress", "--seed", "3"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"] == str(folder) and printed["processes"] == 1
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    expected = {"arch": "small-resnet", "width": 4, "epochs": 2, "batch_size": 8, "train_size": 16, "lr": 0.02,
                "optimizer": "sgd", "nesterov": False, "weight_decay": 1e-4, "schedule": "cosine",
                "warmup": 0.25, "label_smoothing": 0.1, "augment": "flip-crop", "amp": "bf16",
                "attack_mode": "eval"}  # fmt: skip
    assert {k: info["settings"][k] for k in expected} == expected
    assert info["spec"]["num_classes"] == 2 and info["train_samples"] == 16 and info["seed"] == 3
    assert info["test_samples"] == 16  # the manifest's val/ split
    assert main(argv) == 0  # trained already: returns the stored model at once
    assert json.loads(capsys.readouterr().out)["weights"] == printed["weights"]


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--schedule", "step"], ["--schedule", "linear", "cosine"]),
        (["--augment", "mixup"], ["--augment", "flip-crop"]),
        (["--amp", "fp8"], ["--amp", "bf16"]),
        (["--weight-decay", "-1"], ["--weight-decay", "non-negative"]),
        (["--label-smoothing", "1.5"], ["--label-smoothing", "[0, 1)"]),
        (["--width", "0"], ["--width", "positive integer"]),
        (["--checkpoint-every", "0"], ["--checkpoint-every", "positive integer"]),
        (["--optimizer", "lamb"], ["--optimizer", "sgd", "adam"]),
    ],
)
def test_bad_values_exit_2_naming_the_flag(flags, names, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and all(n in err for n in names), err


def test_the_parser_offers_the_settings_values():
    from robustkit.cli import TRAIN_CHOICES
    from robustkit.training import settings

    assert TRAIN_CHOICES == {"schedule": settings.SCHEDULES, "augment": settings.AUGMENTS, "amp": settings.AMPS,
                             "attack_mode": settings.ATTACK_MODES}  # fmt: skip
    assert {a.dest for a in _train_parser()._actions} >= set(settings.OVERRIDABLE)


def _train_parser():
    from robustkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def test_configuration_errors_exit_2(tmp_path, capsys):
    base = ["train", "--out", str(tmp_path), "--train-size", "16", "--batch-size", "8", "--device", "cpu"]
    assert main([*base, "--arch", "torchvision:no_such_net", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--arch torchvision:no_such_net" in err and "no image classifier" in err
    assert main([*base, "--amp", "fp16", "--no-progress"]) == 2
    assert "--amp fp16 needs a CUDA device" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
