"""The one-line defense API (issue 15): ``robustkit.evaluate(as_defense(...), data, suite, eps=...)``,
``keep_adversarial`` with ``RunResult.adversarial``, ``num_classes`` for ``(x, y)`` data, and a user's
model evaluated in the mode it is given."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from robustkit.api import evaluate
from robustkit.defenses.adaptive import batch_statistics
from robustkit.defenses.base import Capabilities, as_defense
from robustkit.errors import ConfigError, InputError, RunExistsError
from robustkit.evaluation.config import RunConfig
from robustkit.evaluation.suite import load_suite, with_eps
from robustkit.models.loading import load_model

SUITE = {"name": "mini", "attacks": [{"attack": "pgd", "eps": ["2/255", "8/255"], "steps": 5}]}
OPTS = {"device": "cpu", "progress": False, "report": False}


class Preprocess(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 16) / 16


def _net(train: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3), nn.BatchNorm1d(3))
    return net.train(train)


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = _net()(x).argmax(1)
    return x, y


def test_evaluate_takes_a_defense_and_its_capabilities_are_part_of_the_identity(tmp_path):
    net = nn.Sequential()
    net.add_module("preprocess", Preprocess())
    net.add_module("net", _net())
    d = as_defense(net, name="quantized", capabilities=Capabilities(non_differentiable=("preprocess",)))
    r = evaluate(d, _data(), SUITE, out=tmp_path, num_classes=3, **OPTS)
    assert r.run_dir.name == "quantized-tensors-mini" and r.summary["n_samples"] == 24
    cfg = RunConfig.build(model=d, data=_data(), suite=SUITE, num_classes=3)
    assert cfg.identity()["model"] == "quantized"
    assert cfg.identity()["capabilities"]["non_differentiable"] == ["preprocess"]
    assert (
        cfg.model_sha256 == RunConfig.build(model=net, data=_data(), suite=SUITE, num_classes=3).model_sha256
    )
    # capabilities given to evaluate() are added to the defense's own; config.model stays the Defense
    more = RunConfig.build(model=d, suite=SUITE, capabilities=Capabilities(stochastic=True))
    assert more.model.capabilities == Capabilities(stochastic=True, non_differentiable=("preprocess",))
    assert more.defense_for(net).capabilities.stochastic and more.defense_for(net).name == "quantized"
    # a resume with other flags is refused, naming what differs
    with pytest.raises(RunExistsError, match="capabilities"):
        evaluate(d, _data(), SUITE, out=tmp_path, num_classes=3, capabilities=Capabilities(stochastic=True),
                 **OPTS)  # fmt: skip
    # transfer sources are part of the identity too
    src = _net()
    with_src = RunConfig.build(
        model=as_defense(net, name="quantized", transfer_from={"sub": src}), suite=SUITE
    )
    assert with_src.identity()["sources"] == {"sub": with_src.identity()["sources"]["sub"]}
    assert with_src.identity()["sources"]["sub"] is not None


def test_bpda_names_are_checked_against_the_real_submodules():
    net = nn.Sequential(Preprocess(), _net())
    with pytest.raises(
        ConfigError, match=r"'preproc'.*submodules \(model.named_modules\(\)\) are: 0, 1, 1.0, 1.1, 1.2\."
    ):
        RunConfig.build(model=net, suite=SUITE, capabilities=Capabilities(non_differentiable=("preproc",)))
    with pytest.raises(ConfigError, match="'x' is not a submodule"):
        RunConfig.build(
            model=as_defense(net, capabilities=Capabilities(non_differentiable=("x",))), suite=SUITE
        )


def test_a_users_model_keeps_its_mode(tmp_path):
    net = _net(train=True)
    modes = [m.training for m in net.modules()]
    loaded, info = load_model(net)
    assert (
        loaded is net and loaded.training and batch_statistics(loaded) == ["2"]
    )  # adapt() sees BN in train mode
    d = as_defense(_net(train=True), name="tt")
    assert load_model(d)[0].training and load_model(d)[1]["name"] == "tt"
    # normalization wrapped around the user's model does not change its mode either
    assert load_model(net, normalize=((0.5,) * 3, (0.5,) * 3))[0].training
    state = {k: v.clone() for k, v in net.state_dict().items()}
    evaluate(net, _data(), SUITE, out=tmp_path, num_classes=3, **OPTS)
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    # a model robustkit builds and loads itself is deployed in eval mode; an ART estimator as ART predicts
    assert not load_model("shapes-resnet", progress=False)[0].training
    art = pytest.importorskip("art.estimators.classification")
    clf = art.PyTorchClassifier(model=_net(train=True), loss=nn.CrossEntropyLoss(), input_shape=(3, 8, 8),
                                nb_classes=3, clip_values=(0.0, 1.0))  # fmt: skip
    assert not load_model(clf)[0].training


def test_eps_override_rebuilds_every_attack_and_changes_the_identity(tmp_path):
    quick = RunConfig.build(suite="quick", eps="4/255")
    assert [e.name for e in quick.suite.entries] == ["fgsm@4/255", "pgd@4/255"]  # the eps sweep collapses
    assert all(math.isclose(e.attack.eps, 4 / 255) for e in quick.suite.entries)
    assert quick.suite.name == "quick@4/255" and math.isclose(quick.eps, 4 / 255)
    plain, other = RunConfig.build(suite="quick"), RunConfig.build(suite="quick", eps=8 / 255)
    assert len({str(c.identity()) for c in (quick, plain, other)}) == 3
    assert quick.replace(batch_size=7).identity() == quick.identity()  # rebuilt configs keep it
    aa = RunConfig.build(suite="autoattack-standard", eps=0.01).suite.entries
    assert [e.name for e in aa] == ["autoattack-linf@0.01"] and aa[0].attack.eps == 0.01
    # a recipe's explicit step size is scaled with eps; the stored config names the new eps
    file = tmp_path / "s.yaml"
    file.write_text(
        "name: s\nattacks:\n  - attack: pgd\n    eps: 8/255\n    step_size: 2/255\n    steps: 3\n"
    )
    (entry,) = with_eps(load_suite(str(file)), 4 / 255).entries
    assert math.isclose(entry.attack.step_size, 1 / 255) and entry.name == "pgd@4/255"
    for bad in ("nan", "inf", "0", "-1/255", "abc", float("nan"), -0.1):
        with pytest.raises(ConfigError, match="eps"):
            RunConfig.build(suite="quick", eps=bad)


def test_keep_adversarial_returns_the_examples_also_after_a_resume(tmp_path, monkeypatch):
    from robustkit.evaluation import execute

    net, (x, y) = _net(), _data(40)
    real, calls = execute._attack, []

    def dies_once(job, stage, todo, *rest):
        calls.append(len(todo))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, stage, todo, *rest)

    monkeypatch.setattr(execute, "_attack", dies_once)
    opts = {
        "out": tmp_path,
        "name": "keep",
        "num_classes": 3,
        "batch_size": 8,
        "keep_adversarial": True,
        **OPTS,
    }
    with pytest.raises(KeyboardInterrupt):
        evaluate(net, (x, y), SUITE, **opts)
    monkeypatch.setattr(execute, "_attack", real)
    r = evaluate(net, (x, y), SUITE, **opts)  # resumes from the two committed batches
    eps = 8 / 255
    idx, x_adv = r.adversarial("pgd@8/255")
    row = next(a for a in r.summary["attacks"] if a["name"] == "pgd@8/255")
    assert (
        len(idx) == 40 and x_adv.shape == (40, 3, 8, 8) and x_adv.dtype == torch.float32
    )  # all clean-correct
    assert (x_adv - x[idx]).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    won, x_won = r.adversarial("pgd@8/255", successful_only=True)
    assert 0 < len(won) < 40 and len(won) == round((1 - row["robust_accuracy"]) * 40)
    with torch.no_grad():
        assert (net(x_won).argmax(1) != y[won]).all()  # the claimed successes fool the model
    assert torch.equal(x_won, x_adv[torch.isin(idx, won)])
    with pytest.raises(ConfigError, match="did you mean 'pgd@8/255'"):
        r.adversarial("pgd@8/256")
    # a run without keep_adversarial says how to get the examples
    r2 = evaluate(net, (x, y), SUITE, out=tmp_path, name="nokeep", num_classes=3, **OPTS)
    with pytest.raises(ConfigError, match="keep_adversarial=True"):
        r2.adversarial("pgd@2/255")


def test_tensor_data_takes_an_explicit_class_count(tmp_path):
    torch.manual_seed(0)
    ten = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, _ = _data(12)
    y = torch.tensor([0, 1, 2] * 4)  # classes 3..9 absent: max(y) + 1 would say 3 classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = RunConfig.build(model=ten, data=(x, y), suite=SUITE, num_classes=10)
    assert len(cfg.data.classes) == 10 and cfg.identity()["num_classes"] == 10
    r = evaluate(ten, (x, y), {"name": "f", "attacks": [{"attack": "fgsm", "eps": "2/255"}]}, out=tmp_path,
                 num_classes=10, **OPTS)  # fmt: skip
    assert r.summary["n_samples"] == 12
    with pytest.warns(UserWarning, match=r"inferred as max\(y\) \+ 1 = 3"):
        assert len(RunConfig.build(data=(x, y), suite=SUITE).data.classes) == 3
    bad = y.clone()
    bad[5] = 10
    with pytest.raises(InputError, match=r"y\[5\] = 10 is outside \[0, 10\)"):
        RunConfig.build(data=(x, bad), suite=SUITE, num_classes=10)
    with pytest.raises(ConfigError, match="num_classes"):
        RunConfig.build(data="shapes", suite=SUITE, num_classes=10)


def test_the_readme_defense_section_runs(tmp_path, monkeypatch, capsys, shapes_model):
    import re
    import shlex
    from pathlib import Path

    from robustkit.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Evaluating your own defense", 1)[1].split("\n## ", 1)[0]
    code = {lang: src for lang, src in re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.S | re.M)}
    monkeypatch.chdir(tmp_path)  # the snippet writes reports/ where it runs
    namespace: dict = {"__name__": "readme"}
    exec(compile(code["python"], "README.md", "exec"), namespace)  # noqa: S102
    result, x_adv, fooled = namespace["result"], namespace["x_adv"], namespace["fooled"]
    assert capsys.readouterr().out.strip() and (tmp_path / "reports" / "quantized" / "report.html").is_file()
    pgd = next(a for a in result.summary["attacks"] if a["name"] == "pgd@4/255")
    n, clean = result.summary["n_samples"], result.summary["clean_accuracy"]
    assert len(namespace["indices"]) == x_adv.shape[0] == round(clean * n) > 0
    assert len(fooled) == round((clean - pgd["robust_accuracy"]) * n)
    assert (x_adv - namespace["x"][namespace["indices"]]).abs().max() <= 4 / 255 + 1e-6
    args = build_parser().parse_args(shlex.split(code["bash"].strip())[1:])
    assert args.defense == "mymodule:build" and args.bpda == ["preprocess"] and args.stochastic
    assert [a["name"] for a in result.summary["attacks"]] == ["fgsm@4/255", "pgd@4/255"]
