"""The runner evaluates a model as deployed (issue 15): every suite entry in every view of
``robustkit.defenses.adaptive.adapt``, the worst view as the robust accuracy, the stochastic verdict over
fresh draws, and findings that know the adaptations.

- a test-time-BatchNorm model (BatchNorm in train mode) is detected as batch-dependent, attacked in the
  three batch views (its mode untouched), its robust accuracy the worst view; the whole-batch view's
  attack only ever sees whole deployed batches;
- a transfer view from the undefended model of a gradient-masked defense beats the white-box view: the
  transfer finding fails, the robust accuracy drops to the transfer view's, the report says so;
- a stochastic model is judged over >= 10 fresh draws of the deployed random model: the mean accuracy and
  the fraction robust under every draw;
- a plain eval-mode model has exactly one view and the figures it always had.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import create_attack
from robustkit.defenses.base import Capabilities, as_defense
from robustkit.errors import RunExistsError
from robustkit.evaluation import runner
from robustkit.evaluation.config import RunConfig
from robustkit.evaluation.store import STORE_FILE, Store
from robustkit.report.load import load_run
from robustkit.report.render import render_html

B = 6  # the deployed batch size
PGD = {"name": "pgd3", "attacks": [{"attack": "pgd", "eps": "8/255", "steps": 3}]}


class BatchStatsNet(nn.Module):
    """A small conv net whose BatchNorm normalizes with the statistics of the batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Probe(nn.Module):
    """Records the batch size of every forward pass that builds a graph (the attacks' gradient passes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.sizes: list[int] = []
        self.recording = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording and torch.is_grad_enabled() and x.requires_grad:
            self.sizes.append(x.shape[0])
        return self.net(x)


class ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return torch.zeros_like(g)


class Masked(nn.Module):
    """A gradient-masked "defense": the undefended network's output, a zero input gradient."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(ZeroGrad.apply(x))


def _deployed_labels(model: nn.Module, x: torch.Tensor, flip: int = 5) -> torch.Tensor:
    """Labels the model gets right in its deployed batches of ``B`` (every ``flip``-th one wrong)."""
    with torch.no_grad():
        y = torch.cat([model(x[s : s + B]).argmax(1) for s in range(0, len(x), B)])
    y[::flip] = (y[::flip] + 1) % 3
    return y


def _data(n: int = 12) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _run(tmp_path, model, data, suite=PGD, name="r", **options):
    config = RunConfig(model=model, data=data, suite=suite, out=tmp_path, name=name, batch_size=B, device="cpu",
                       progress=False, report=False, num_classes=3, **options)  # fmt: skip
    return runner.run(config)


def _rows(run_dir) -> dict[str, dict[int, object]]:
    store = Store(run_dir / STORE_FILE)
    try:
        return {a["name"]: {o.idx: o for o in store.outcomes(a["id"])} for a in store.attacks()}
    finally:
        store.close()


def test_test_time_batchnorm_is_attacked_in_every_batch_view(tmp_path):
    net = BatchStatsNet().train()
    x = _data()
    y = _deployed_labels(net, x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = _run(tmp_path, net, (x, y))
    s = res.summary
    assert net.training and all(m.training for m in net.modules())  # its mode was respected
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # and its statistics
    record = s["defense"]
    assert record["capabilities"]["batch_dependent"] and record["detected"]
    assert "BatchNorm" in record["detected"][0]
    views = {v["view"]: v["robust_accuracy"] for v in s["views"]}
    assert list(views) == ["whole-batch", "one-at-a-time", "among-clean"]
    assert s["robust_accuracy"] == min(views.values()) and s["worst_view"] == min(views, key=views.get)
    assert [a["name"] for a in s["attacks"]] == [f"pgd@8/255 [{v}]" for v in views]
    assert all(a["params"]["view"] == a["name"].split("[")[1][:-1] for a in s["attacks"])
    # clean: the deployed batches, in train mode (every 5th label was flipped: 3 of 12 wrong)
    assert s["clean_accuracy"] == pytest.approx(9 / 12)
    rows = _rows(res.run_dir)
    whole = rows["pgd@8/255 [whole-batch]"]
    assert len(whole) == 12 and all(not whole[i].attacked and not whole[i].robust for i in (0, 5, 10))
    # each view's figure is recomputed from its own rows: robust only when clean-correct and robust
    for view, acc in views.items():
        outs = rows[f"pgd@8/255 [{view}]"]
        assert acc == pytest.approx(sum(o.robust for o in outs.values()) / 12)
    found = {f["name"]: f for f in s["findings"]}
    assert (
        found["batch-dependence"]["status"] == "pass"
        and "batch views" in found["batch-dependence"]["evidence"]
    )
    html = render_html([load_run(res.run_dir)])
    assert 'data-section="views"' in html and "treated as batch-dependent" in html
    assert f"worst case: {s['worst_view']} view" in html


def test_the_whole_batch_view_attacks_only_whole_batches(tmp_path, monkeypatch):
    net = BatchStatsNet().train()
    x = _data()
    probe = Probe(net).train()
    sanity = runner._sanity

    def quiet_probe(*args):  # the sanity checks' own attacks are not the views' attacks
        probe.recording = False
        sanity(*args)

    monkeypatch.setattr(runner, "_sanity", quiet_probe)
    _run(tmp_path, probe, (x, _deployed_labels(net, x)))
    # the attacks' gradient passes: whole deployed batches (whole-batch, among-clean) and single samples
    # (one-at-a-time); never a subset of a batch (no clean subset, no compaction)
    assert set(probe.sizes) == {1, B}


def test_one_at_a_time_and_among_clean_are_judged_in_their_composition(tmp_path):
    """No attack (eps 0): each view's robust accuracy is the clean accuracy of its batch composition."""
    net = BatchStatsNet().train()
    x = _data()
    y = _deployed_labels(net, x, flip=100)  # label 0 flipped: 11 of 12 right in the deployed batches
    suite = {"name": "zero", "attacks": [{"attack": "fgsm", "eps": 0.0}]}
    s = _run(tmp_path, net, (x, y), suite).summary
    with torch.no_grad():
        alone = torch.cat([net(x[i : i + 1]) for i in range(12)]).argmax(1) == y
    views = {v["view"]: v["robust_accuracy"] for v in s["views"]}
    assert views["whole-batch"] == pytest.approx(11 / 12)
    assert views["among-clean"] == pytest.approx(11 / 12)  # its clean mates: the deployed batch itself
    correct = torch.ones(12, dtype=torch.bool)
    correct[0] = False
    assert views["one-at-a-time"] == pytest.approx(float((alone & correct).float().mean()))
    assert views["one-at-a-time"] < views["whole-batch"]  # alone, BatchNorm sees another model


def test_transfer_from_the_undefended_model_exposes_gradient_masking(tmp_path):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    x = _data(24)
    y = _deployed_labels(base, x, flip=100)
    defense = as_defense(Masked(base), name="masked", transfer_from={"undefended": base})
    res = _run(tmp_path, defense, (x, y))
    s = res.summary
    views = {v["view"]: v["robust_accuracy"] for v in s["views"]}
    assert list(views) == ["white-box", "transfer:undefended"]
    assert [a["name"] for a in s["attacks"]] == ["pgd@8/255", "pgd@8/255 [transfer:undefended]"]
    assert views["transfer:undefended"] < views["white-box"] - 0.2
    assert s["robust_accuracy"] == views["transfer:undefended"] and s["worst_view"] == "transfer:undefended"
    found = {f["name"]: f for f in s["findings"]}
    assert found["transfer-vs-white-box"]["status"] == "fail"
    assert s["defense"]["name"] == "masked"
    html = render_html([load_run(res.run_dir)])
    assert (
        "Transfer is stronger than the white-box attack" in html and "no sign of gradient masking" not in html
    )


def test_a_stochastic_model_is_judged_over_fresh_draws(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    x = _data(12)
    with torch.no_grad():
        y = net.eval()(x).argmax(1)  # its mean prediction
    net.train()  # dropout left on: a random model, detected as such
    suite = {"name": "apgd", "attacks": [{"attack": "apgd-ce", "eps": "4/255", "steps": 3}]}
    res = _run(tmp_path, net, (x, y), suite, eot_samples=2, draws=12)
    s = res.summary
    assert s["defense"]["capabilities"]["stochastic"] and s["defense"]["draws"] == 12
    (attack,) = s["attacks"]
    assert attack["params"]["eot_samples"] == 2  # EOT inside the gradient attack
    (outs,) = _rows(res.run_dir).values()
    fractions = [o.metrics.get("draw_accuracy", 0.0) for o in outs.values()]
    assert all(abs(f * 12 - round(f * 12)) < 1e-6 for f in fractions)
    assert any(0 < f < 1 for f in fractions)  # judged on the random model, not in eval mode
    assert s["robust_accuracy"] == pytest.approx(sum(fractions) / 12)
    assert s["robust_accuracy_every_draw"] == pytest.approx(sum(f == 1 for f in fractions) / 12)
    assert s["robust_accuracy_every_draw"] <= s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["clean_accuracy_every_draw"] <= s["clean_accuracy"]
    assert {o.robust for o in outs.values()} <= {True, False}
    assert all(o.robust == (f == 1) for o, f in zip(outs.values(), fractions, strict=True))
    found = {f["name"]: f for f in s["findings"]}
    assert found["randomized-outputs"]["status"] == "pass"
    assert net.training and net[3].training
    html = render_html([load_run(res.run_dir)])
    assert "mean over 12 draws" in html and "robust under every draw" in html
    assert "dropout is active in 3: treated as stochastic" in html
    again = _run(tmp_path, net, (x, y), suite, name="again", eot_samples=2, draws=12).summary
    assert again["robust_accuracy"] == s["robust_accuracy"]  # the draws are seeded by the run's seed


def test_a_plain_model_has_one_view_and_the_figures_it_always_had(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3), nn.BatchNorm1d(3)).eval()
    x = _data(18)
    y = _deployed_labels(net, x)
    suite = {
        "name": "fgsm",
        "attacks": [{"attack": "fgsm", "eps": "4/255"}, {"attack": "fgsm", "eps": "1/255"}],
    }
    res = _run(tmp_path, net, (x, y), suite)
    s = res.summary
    assert s["views"] == [{"view": "white-box", "robust_accuracy": s["robust_accuracy"],
                           "robust_accuracy_ci": s["robust_accuracy_ci"]}]  # fmt: skip
    assert [a["name"] for a in s["attacks"]] == ["fgsm@4/255", "fgsm@1/255"]
    assert all("view" not in a["params"] and "view" not in a for a in s["attacks"])
    assert "defense" not in s and "robust_accuracy_every_draw" not in s
    # the figures, recomputed independently: clean-correct and still correct under each FGSM
    with torch.no_grad():
        correct = net(x).argmax(1) == y
    robust = correct.clone()
    for eps in (4 / 255, 1 / 255):
        x_adv = create_attack("fgsm", eps=eps)(net, x, y).x_adv
        with torch.no_grad():
            robust &= net(x_adv).argmax(1) == y
    assert s["clean_accuracy"] == pytest.approx(float(correct.float().mean()))
    assert s["robust_accuracy"] == pytest.approx(float(robust.float().mean()))
    assert 0 < s["robust_accuracy"] < s["clean_accuracy"]
    store = Store(res.run_dir / STORE_FILE)
    try:
        assert store.meta("defense") is None
        assert {b.stage for b in store.batches()} == {"clean", "fgsm@4/255", "fgsm@1/255"}
        attacked = {
            a["name"]: {o.idx for o in store.outcomes(a["id"]) if o.attacked} for a in store.attacks()
        }
    finally:
        store.close()
    assert all(v == {i for i in range(18) if correct[i]} for v in attacked.values())  # clean subset only


def test_declared_capabilities_reach_a_plain_module(tmp_path):
    """``RunConfig.capabilities`` declares a batch dependence the model does not show by its modes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    x = _data(12)
    y = _deployed_labels(net, x)
    suite = {"name": "fgsm", "attacks": [{"attack": "fgsm", "eps": "4/255"}]}
    s = _run(tmp_path, net, (x, y), suite, capabilities=Capabilities(batch_dependent=True)).summary
    assert [v["view"] for v in s["views"]] == ["whole-batch", "one-at-a-time", "among-clean"]
    assert not s["defense"]["detected"] and s["defense"]["declared"]["batch_dependent"]
    # a batch-independent model attacked in every view: the same figure in each
    assert len({round(v["robust_accuracy"], 6) for v in s["views"]}) == 1


def test_a_batch_dependent_run_resumes_whole_batches_at_its_batch_size(tmp_path):
    net = BatchStatsNet().train()
    x = _data()
    y = _deployed_labels(net, x)
    suite = {"name": "fgsm", "attacks": [{"attack": "fgsm", "eps": "4/255"}]}
    first = _run(tmp_path, net, (x, y), suite).summary
    store = Store(tmp_path / "r" / STORE_FILE)
    try:
        aid = {a["name"]: a["id"] for a in store.attacks()}["fgsm@4/255 [whole-batch]"]
        with store.transaction() as db:  # as if killed after committing part of a batch
            db.execute("DELETE FROM outcomes WHERE attack_id = ? AND idx IN (7, 8)", (aid,))
            db.execute(
                "UPDATE outcomes SET robust = 1 - robust, linf = -1 WHERE attack_id = ? AND idx = 6", (aid,)
            )
    finally:
        store.close()
    again = _run(tmp_path, net, (x, y), suite).summary
    assert again["views"] == first["views"] and again["robust_accuracy"] == first["robust_accuracy"]
    store = Store(tmp_path / "r" / STORE_FILE)
    try:
        redone = {o.idx: o for o in store.outcomes(aid)}
    finally:
        store.close()
    assert redone[6].linf != -1  # its batch (6..11) was attacked again whole, not samples 7 and 8 alone
    with pytest.raises(RunExistsError, match="batches of 6"):
        runner.run(RunConfig(model=net, data=(x, y), suite=suite, out=tmp_path, name="r", batch_size=4, device="cpu",
                             progress=False, report=False, num_classes=3))  # fmt: skip
