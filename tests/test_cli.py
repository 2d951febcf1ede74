"""`robustkit evaluate` end to end on a small --limit, error exit codes, and resume."""

from __future__ import annotations

import json

import pytest
import yaml

from robustkit.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, shapes_model):
    out = tmp_path_factory.mktemp("runs")
    import torch

    threads = torch.get_num_threads()
    args = ["evaluate", "--limit", "40", "--out", str(out), "--name", "q", "--quiet", "--device", "cpu"]
    try:
        assert main([*args, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    return out / "q"


def test_evaluate_writes_store_summary_config_and_report(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert summary["n_samples"] == 40
    assert 0.9 <= summary["clean_accuracy"] <= 1
    names = [a["name"] for a in summary["attacks"]]
    assert names == [f"{k}@{e}/255" for k in ("fgsm", "pgd") for e in (1, 2, 4, 8)]
    for a in summary["attacks"]:
        assert set(a) >= {"name", "attack", "params", "eps", "robust_accuracy", "success_rate", "seconds"}
        assert 0 <= a["robust_accuracy"] <= 1 and 0 <= a["success_rate"] <= 1
    pgd8 = next(a for a in summary["attacks"] if a["name"] == "pgd@8/255")
    assert pgd8["robust_accuracy"] < 0.1
    assert summary["robust_accuracy"] <= min(a["robust_accuracy"] for a in summary["attacks"])
    config = yaml.safe_load((quick_run / "config.yaml").read_text())
    assert config["suite"]["name"] == "quick" and config["limit"] == 40
    html = (quick_run / "report.html").read_text()
    assert "pgd@8/255" in html and "<script src=" not in html and "http://" not in html.split("<svg", 1)[0]


def test_rerun_resumes_without_recomputing(quick_run, capsys):
    import sqlite3

    db = sqlite3.connect(quick_run / "results.sqlite")
    before = db.execute("SELECT COUNT(*), SUM(seconds) FROM batches").fetchone()
    db.close()
    assert (
        main(
            [
                "evaluate",
                "--limit",
                "40",
                "--out",
                str(quick_run.parent),
                "--name",
                "q",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    db = sqlite3.connect(quick_run / "results.sqlite")
    assert db.execute("SELECT COUNT(*), SUM(seconds) FROM batches").fetchone() == before
    db.close()


def test_different_config_in_same_dir_is_refused(quick_run, capsys):
    code = main(["evaluate", "--limit", "41", "--out", str(quick_run.parent), "--name", "q", "--quiet"])
    assert code == 2
    assert "differs in: limit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--suite", "quik"], "did you mean 'quick'"),
        (["--data", "shapez"], "did you mean 'shapes'"),
        (["--model", "shapes-resnt"], "did you mean 'shapes-resnet'"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    code = main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_name_cannot_escape_out_dir(tmp_path, shapes_model):
    code = main(
        [
            "evaluate",
            "--limit",
            "4",
            "--out",
            str(tmp_path),
            "--name",
            "../../escape",
            "--quiet",
            "--suite",
            str(_one_fgsm(tmp_path)),
        ]
    )
    assert code == 0
    assert (tmp_path / "escape" / "summary.json").exists() and not (
        tmp_path.parent.parent / "escape"
    ).exists()


def _one_fgsm(tmp_path):
    p = tmp_path / "one.yaml"
    p.write_text("name: one\nattacks:\n  - attack: fgsm\n    eps: 2/255\n")
    return p


def test_list_and_report_commands(quick_run, tmp_path, capsys):
    assert main(["list"]) == 0
    assert "pgd" in capsys.readouterr().out
    out = tmp_path / "cmp.html"
    assert main(["report", str(quick_run), str(quick_run), "--out", str(out)]) == 0
    html = out.read_text()
    assert 'data-section="comparison"' in html and html.count('data-section="summary"') == 2


DEFENSE_MODULE = """
from collections import OrderedDict

import torch
from torch import nn

from robustkit.defenses.base import Capabilities, as_defense


class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 8) / 8


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    return nn.Sequential(OrderedDict(preprocess=Quantize(), net=net)).eval()


def build_defense():
    return as_defense(build(), name="quantized", capabilities=Capabilities(batch_dependent=True))
"""


@pytest.fixture
def defense_module(tmp_path, monkeypatch):
    (tmp_path / "rk_user_defense.py").write_text(DEFENSE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rk_user_defense"


def test_defense_factory_with_capability_flags_and_eps(tmp_path, defense_module, capsys):
    out = tmp_path / "runs"
    args = ["evaluate", "--suite", str(_one_fgsm(tmp_path)), "--limit", "6", "--quiet", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    flags = ["--bpda", "preprocess", "--stochastic", "--eot-samples", "2", "--draws", "12", "--eps", "4/255"]
    assert main([*args, "--defense", f"{defense_module}:build", *flags, "--name", "d"]) == 0
    assert "fgsm@4/255" in capsys.readouterr().out
    config = yaml.safe_load((out / "d" / "config.yaml").read_text())
    assert config["model"] == f"{defense_module}:build"
    assert config["capabilities"] == {"stochastic": True, "batch_dependent": False,
                                      "non_differentiable": ["preprocess"]}  # fmt: skip
    assert config["eot_samples"] == 2 and config["draws"] == 12 and config["eps"] == pytest.approx(4 / 255)
    assert [a["name"] for a in config["suite"]["attacks"]] == ["fgsm@4/255"]
    assert config["suite"]["attacks"][0]["eps"] == pytest.approx(4 / 255)
    # a factory returning a Defense: its own capabilities, the flags added to them
    assert (
        main([*args, "--defense", f"{defense_module}:build_defense", "--bpda", "preprocess", "--name", "e"])
        == 0
    )
    config = yaml.safe_load((out / "e" / "config.yaml").read_text())
    assert config["model"] == "quantized" and config["capabilities"] == {
        "stochastic": False, "batch_dependent": True, "non_differentiable": ["preprocess"]}  # fmt: skip
    # the same run with other flags is a different run: refused, naming what differs
    assert main([*args, "--defense", f"{defense_module}:build", *flags[:-2], "--name", "d"]) == 2
    assert "differs in: suite" in capsys.readouterr().err


def test_bpda_with_a_wrong_name_exits_2_naming_the_submodules(tmp_path, defense_module, capsys):
    args = ["evaluate", "--defense", f"{defense_module}:build", "--bpda", "preproc", "--quiet",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "'preproc'" in err
        and "are: net, preprocess, net.0, net.1, net.2, net.3." in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "out").exists()
    assert (
        main(["evaluate", "--defense", "no_such_module_rk:build", "--quiet", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "cannot import module 'no_such_module_rk'" in capsys.readouterr().err


@pytest.mark.parametrize("eps", ["nan", "inf", "0", "-8/255", "8/0", "big"])
def test_bad_eps_exits_2(tmp_path, capsys, eps):
    assert main(["evaluate", f"--eps={eps}", "--quiet", "--out", str(tmp_path / "out")]) == 2
    assert "eps" in capsys.readouterr().err and not (tmp_path / "out").exists()
