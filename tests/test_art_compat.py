"""robustkit.art measured against ART itself on the trained shapes model.

- robustkit's PGD and APGD-CE, run through the ART API on a ``PyTorchClassifier`` with
  ``preprocessing=(mean, std)``, give the robust accuracy of ART's own ``ProjectedGradientDescent``
  and ``AutoProjectedGradientDescent`` at the same settings, within one point;
- ART's PGD against a robustkit defense through ``to_estimator`` gives the robust accuracy of
  robustkit's native PGD on that defense, within one point;
- every snippet of the README's "Using robustkit with ART" section runs; its ``robustkit
  evaluate --model my_models:...`` command line is resolved in the default run and run end to end
  in a ``slow`` test.

The default run uses 100 test samples at eps = 2/255, where the model's robust accuracy is near 50 %
(clean 99.5 %; PGD-10: 91 % at 1/255, 49.5 % at 2/255, 18 % at 3/255 on 200 samples). The ``slow``
tests repeat the comparisons on 500 samples with more steps (PGD-20, APGD-20 from two seeds), and against the trained ABNN defense.
"""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

import robustkit.art as rka
from robustkit.attacks import create_attack
from robustkit.builtin.shapes import shapes
from robustkit.defenses.base import Capabilities, Defense, as_defense
from robustkit.functional.random import sample_generators

EPS = 2 / 255
N = 100
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "## Using robustkit with ART"


@pytest.fixture(scope="module")
def net(shapes_model) -> nn.Module:
    return shapes_model.eval()


def art_classifier(net: nn.Module) -> PyTorchClassifier:
    """ART's usual setup: the bare network, normalization as the estimator's ``preprocessing``."""
    return PyTorchClassifier(
        model=net.model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        preprocessing=(net.mean.view(3, 1, 1).numpy(), net.std.view(3, 1, 1).numpy()),
        device_type="cpu",
    )


def shapes_xy(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = shapes("test", n=n)
    return data.x.numpy(), data.y.numpy()


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    return shapes_xy(N)


def accuracy(estimator: PyTorchClassifier, x: np.ndarray, y: np.ndarray, batch_size: int = 128) -> float:
    return float(np.mean(estimator.predict(x, batch_size=batch_size).argmax(1) == y))


def within_one_point(a: float, b: float) -> bool:
    return abs(a - b) <= 0.01 + 1e-9


def in_the_middle(acc: float) -> None:
    assert 0.2 < acc < 0.8, f"robust accuracy {acc:.1%}: pick an eps where the comparison means something"


# ------------------------------------------------------------------------- robustkit attacks in ART
def compare_pgd(net: nn.Module, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, float]:
    clf = art_classifier(net)
    assert accuracy(clf, x, y) > 0.95
    step = EPS / 4
    ours = rka.attack("pgd", clf, eps=EPS, steps=steps, step_size=step, random_start=False, verbose=False)
    theirs = ProjectedGradientDescent(
        clf, eps=EPS, eps_step=step, max_iter=steps, num_random_init=0, batch_size=128, verbose=False
    )
    x_ours, x_theirs = ours.generate(x, y), theirs.generate(x, y)
    for adv in (x_ours, x_theirs):
        assert np.abs(adv - x).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    return accuracy(clf, x_ours, y), accuracy(clf, x_theirs, y)


def compare_apgd(net: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> tuple[float, float]:
    clf = art_classifier(net)
    ours = rka.attack("apgd-ce", clf, eps=EPS, steps=steps, seed=seed, verbose=False)
    np.random.seed(seed)  # ART's random start draws from numpy's global generator
    theirs = AutoProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=EPS,
        eps_step=2 * EPS,  # ART's first step is eps_step; the APGD paper's is 2 * eps
        max_iter=steps,
        nb_random_init=1,
        batch_size=128,
        loss_type="cross_entropy",
        verbose=False,
    )
    x_ours, x_theirs = ours.generate(x, y), theirs.generate(x, y)
    assert np.abs(x_ours - x).max() <= EPS + 1e-6
    return accuracy(clf, x_ours, y), accuracy(clf, x_theirs, y)


def test_pgd_through_art_matches_arts_pgd(net, xy):
    ours, theirs = compare_pgd(net, *xy, steps=5)
    in_the_middle(theirs)
    assert within_one_point(ours, theirs), (ours, theirs)


def test_apgd_through_art_matches_arts_apgd(net, xy):
    ours, theirs = compare_apgd(net, *xy, steps=10, seed=0)
    in_the_middle(theirs)
    assert within_one_point(ours, theirs), (ours, theirs)


# ------------------------------------------------------------------- ART attacks on robustkit defenses
class Blur(nn.Module):
    """A fixed 3x3 box blur: a cheap, differentiable preprocessing defense in front of the network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def compare_on_defense(
    defense: Defense, x: np.ndarray, y: np.ndarray, steps: int, batch: int
) -> tuple[float, float]:
    """Robust accuracy of ART's PGD on ``to_estimator(defense)`` and of robustkit's PGD run natively on
    the defense's model, in the same batches (batch-dependent defenses see the same batch)."""
    est = rka.to_estimator(defense, input_shape=x.shape[1:])
    step = EPS / 4
    art_pgd = ProjectedGradientDescent(
        est, eps=EPS, eps_step=step, max_iter=steps, num_random_init=0, batch_size=batch, verbose=False
    )
    art_acc = accuracy(est, art_pgd.generate(x, y), y, batch_size=batch)
    pgd = create_attack("pgd", eps=EPS, steps=steps, step_size=step, random_start=False)
    model = defense.model.eval()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    robust = 0
    for i in range(0, len(xt), batch):
        xb, yb = xt[i : i + batch], yt[i : i + batch]
        result = pgd(model, xb, yb, generator=sample_generators(0, range(i, i + len(xb))))
        with torch.no_grad():
            robust += int((model(result.x_adv).argmax(1) == yb).sum())
    return robust / len(xt), art_acc


def test_art_pgd_on_a_defense_matches_robustkits_pgd(net, xy):
    defense = as_defense(nn.Sequential(Blur(), net), name="blur", capabilities=Capabilities())
    est = rka.to_estimator(defense, input_shape=(3, 32, 32))
    assert est.model is defense.model and est.clip_values[1] == 1.0
    native, art = compare_on_defense(defense, *xy, steps=5, batch=N)
    in_the_middle(art)
    assert within_one_point(native, art), (native, art)


# ------------------------------------------------------------------- README's ART section runs
def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown page as (language, code)."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


@pytest.fixture(scope="module")
def doc_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]  # up to the next top-level section
    code = blocks(section)
    langs = [lang for lang, _ in code]
    assert langs.count("python") >= 4 and "bash" in langs and "yaml" in langs
    return code


def factory_module(src: str, classifier: PyTorchClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's ``my_models.py`` (its last python block), importable, with the page's classifier."""
    mod = types.ModuleType("my_models")
    exec(compile(src, "my_models.py", "exec"), mod.__dict__)  # noqa: S102
    mod.classifier = classifier
    monkeypatch.setitem(sys.modules, "my_models", mod)


def test_the_art_page_snippets_run(doc_blocks, tmp_path, monkeypatch, capsys):
    from robustkit.evaluation.suite import load_suite
    from robustkit.models.loading import load_model

    monkeypatch.chdir(tmp_path)  # the snippets write reports/ where they run
    namespace: dict = {"__name__": "art_doc"}
    python = [src for lang, src in doc_blocks if lang == "python"]
    for src in python[:-1]:  # the three directions, in order, in one namespace
        exec(compile(src, "README.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "robustkit PGD" in printed and "ART PGD on the blur defense" in printed
    assert namespace["result"].summary["clean_accuracy"] > 0.9
    report = (tmp_path / "reports" / "art-classifier" / "report.html").read_text()
    assert "art.ProjectedGradientDescent@2/255" in report and "pgd@2/255" in report
    # the recipe block: ART's PGD next to robustkit's
    yaml_src = next(src for lang, src in doc_blocks if lang == "yaml")
    suite = load_suite({"name": "doc", **yaml.safe_load(yaml_src)})
    assert [e.name for e in suite.entries][1].startswith("art.ProjectedGradientDescent")
    # the command line's --model: a factory returning the estimator (the full run is a slow test)
    factory_module(python[-1], namespace["classifier"], monkeypatch)
    command = shlex.split(next(src for lang, src in doc_blocks if lang == "bash").strip())
    assert command[:2] == ["robustkit", "evaluate"]
    model, info = load_model(command[command.index("--model") + 1])
    assert isinstance(model, rka.EstimatorModel) and model.model is namespace["net"].model
    assert info["kind"] == "factory"


@pytest.mark.slow
def test_the_art_page_command_line_runs(doc_blocks, shapes_model, tmp_path, monkeypatch):
    from robustkit.cli import main

    python = [src for lang, src in doc_blocks if lang == "python"]
    factory_module(python[-1], art_classifier(shapes_model), monkeypatch)
    command = shlex.split(next(src for lang, src in doc_blocks if lang == "bash").strip())
    assert main([*command[1:], "--out", str(tmp_path), "--name", "cli", "--quiet"]) == 0
    assert (tmp_path / "cli" / "report.html").is_file()


# ------------------------------------------------------------------------------------ slow, larger
@pytest.mark.slow
def test_pgd_and_apgd_match_art_on_500_samples(net):
    x, y = shapes_xy(500)
    ours, theirs = compare_pgd(net, x, y, steps=20)
    assert within_one_point(ours, theirs), (ours, theirs)
    for seed in (0, 1):
        ours, theirs = compare_apgd(net, x, y, steps=20, seed=seed)
        in_the_middle(theirs)
        assert within_one_point(ours, theirs), (seed, ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["abnn", "abnn-batch"])
def test_art_pgd_on_abnn_matches_robustkits_pgd(name):
    from robustkit.defenses.loading import load_defense

    defense = load_defense(name, dataset="shapes", progress=False)  # trained on first use, cached
    x, y = shapes_xy(200)
    native, art = compare_on_defense(defense, x, y, steps=10, batch=100)
    assert within_one_point(native, art), (name, native, art)
