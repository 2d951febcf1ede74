"""Evaluating defenses: capabilities are honored and recorded, several defenses are compared."""

from __future__ import annotations

import json

import torch
from torch import nn

from robustkit.api import evaluate_defenses
from robustkit.defenses.adaptive import adapt
from robustkit.defenses.base import Capabilities, as_defense


class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4  # zero gradient almost everywhere


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x + 0.01 * torch.randn_like(x)).clamp(0, 1))


def test_adapt_wraps_bpda_and_eot(shapes_model):
    quant = nn.Sequential(Quantize(), shapes_model)
    d = as_defense(quant, name="quant", capabilities=Capabilities(non_differentiable=("0",)))
    a = adapt(d)
    model, record = a.model, a.record
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # BPDA gives a useful gradient
    assert isinstance(quant[0], Quantize)  # the user's model is untouched
    assert "BPDA" in record["how_honored"][0]
    noisy = as_defense(
        Noisy(shapes_model), name="noisy", capabilities=Capabilities(stochastic=True, batch_dependent=True)
    )
    a = adapt(noisy, eot_samples=4)
    model, record = a.model, a.record
    assert model is noisy.model  # EOT goes inside the gradient attacks, the deployed model is not averaged
    assert record["eot_samples"] == 4 and record["draws"] >= 10
    assert record["views"] == ["whole-batch", "one-at-a-time", "among-clean"]
    assert any("EOT" in h for h in record["how_honored"]) and any("batch" in h for h in record["how_honored"])


def test_two_defenses_compared(tmp_path, shapes_model):
    plain = as_defense(shapes_model, name="plain")
    noisy = as_defense(Noisy(shapes_model), name="noisy", capabilities=Capabilities(stochastic=True))
    suite = {"name": "one", "attacks": [{"attack": "pgd", "eps": "4/255", "steps": 3}]}
    results, report = evaluate_defenses([plain, noisy], suite=suite, out=tmp_path, name="cmp", limit=16, device="cpu",
                                        progress=False, eot_samples=2)  # fmt: skip
    assert [r.run_dir.name for r in results] == ["cmp-plain", "cmp-noisy"]
    assert results[1].summary["defense"]["capabilities"]["stochastic"] is True
    comparison = json.loads((tmp_path / "cmp-comparison.json").read_text())
    assert [row["defense"] for row in comparison["rows"]] == ["plain", "noisy"]
    html = report.read_text()
    assert "plain" in html and "noisy" in html and "EOT" in html


def test_cli_defense_flag(tmp_path, shapes_model, capsys):
    from robustkit.cli import main
    from robustkit.defenses.base import DEFENSES
    from robustkit.models.checkpoint import save_weights
    from robustkit.training.data import load_split, spec_for

    recipe = DEFENSES.create("standard")  # an untrained network of the recipe: no training in this test
    weights = tmp_path / "standard.safetensors"
    save_weights(
        recipe.build(spec_for("shapes", load_split("shapes", "test", n=8)), recipe.settings), weights
    )
    suite = tmp_path / "one.yaml"
    suite.write_text("name: one\nattacks:\n  - attack: pgd\n    eps: 4/255\n    steps: 2\n")
    args = ["evaluate", "--defense", f"standard:{weights}", "--suite", str(suite), "--limit", "8", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--device", "cpu", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "== defense standard:standard.safetensors" in out and "comparison:" in out
    assert (tmp_path / "runs" / "cli-comparison.json").exists()
    # --model and --defense contradict each other: refused before anything is written
    code = main([*args, "--out", str(tmp_path / "bad"), "--model", "shapes-resnet"])
    assert code == 2 and "--defense" in capsys.readouterr().err and not (tmp_path / "bad").exists()
