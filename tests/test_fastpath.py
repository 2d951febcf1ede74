"""The fast path: compaction and stacked restarts give the plain loop's results; channels_last /
compile / bf16 wrappers that leave the user's model untouched; criteria and the fp32 confirmation; the
profile; the benchmark helpers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import robustkit
from robustkit.attacks import pgd as pgd_mod
from robustkit.attacks.base import Counter
from robustkit.attacks.criteria import (
    Misclassification,
    TargetedMisclassification,
    confirm,
    fp32_logits,
    is_success,
)
from robustkit.errors import ConfigError
from robustkit.functional.random import sample_generators
from robustkit.models.fastpath import BF16_TOLERANCE, FastModel, make_fastpath
from robustkit.threat import make_threat


def _double_net() -> nn.Module:
    """A batch-independent conv net in float64 (exact results whatever the batch composition)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 4)
    )
    return net.double().eval()


def _data(n: int = 24):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def _ascend(model, x, y, *, compact: bool, steps: int = 9, eps: float = 0.03):
    threat = make_threat("Linf", eps)
    start = x + threat.init(x, sample_generators(0, range(len(x)))).to(x.dtype)
    obj = pgd_mod.PGD(loss="ce").objective(y, None)
    counter = Counter()
    out = pgd_mod.gradient_ascent(
        model, x, y, threat, steps=steps, step_size=eps / 4, objective=obj, target=None, start=start,
        counter=counter, objective_at=(lambda live: pgd_mod.PGD(loss="ce").objective(y[live], None)) if compact else None,
    )  # fmt: skip
    return out, counter


@pytest.mark.parametrize("eps", [0.01, 0.03, 0.3])
def test_compaction_equals_plain_loop(eps):
    model, (x, y) = _double_net(), _data()
    (adv_c, ok_c), cnt_c = _ascend(model, x, y, compact=True, eps=eps)
    (adv_p, ok_p), cnt_p = _ascend(model, x, y, compact=False, eps=eps)
    assert torch.equal(ok_c, ok_p) and torch.equal(adv_c, adv_p)
    assert cnt_c.queries <= cnt_p.queries
    if eps == 0.3:  # everything breaks early: the compacted loop stops early and spends fewer passes
        assert bool(ok_p.all()) and cnt_c.queries < cnt_p.queries


def test_compaction_targeted_equals_plain_loop():
    model, (x, y) = _double_net(), _data()
    atk = robustkit.create_attack("pgd", eps=0.05, steps=8, targeted=True, target_mode="random")
    gens = lambda: sample_generators(1, range(len(x)))  # noqa: E731
    full = atk(model, x, y, generator=gens())
    orig = pgd_mod.PGD._ascend

    def plain(self, model, xs, ys, ts, start, threat, step, counter, judge=None, trace=None):
        return pgd_mod.gradient_ascent(
            model, xs, ys, threat, steps=self.steps, step_size=step, objective=self.objective(ys, ts),
            target=ts, start=start, counter=counter, judge=judge, trace=trace,
        )  # fmt: skip

    try:
        pgd_mod.PGD._ascend = plain
        ref = atk(model, x, y, generator=gens())
    finally:
        pgd_mod.PGD._ascend = orig
    assert torch.equal(full.success, ref.success) and torch.equal(full.x_adv, ref.x_adv)


def test_stacked_restarts_equal_one_by_one(monkeypatch):
    model, (x, y) = _double_net(), _data(16)
    atk = robustkit.create_attack("pgd", eps=0.02, steps=4, restarts=3)
    one = atk(model, x, y, generator=sample_generators(2, range(len(x))))
    monkeypatch.setattr(pgd_mod, "stack_in_batch", lambda x: True)
    stacked = atk(model, x, y, generator=sample_generators(2, range(len(x))))
    assert torch.equal(one.success, stacked.success)
    assert torch.equal(one.x_adv, stacked.x_adv)


def test_stacked_restarts_fall_back_on_oom_with_same_draws(monkeypatch):
    model, (x, y) = _double_net(), _data(8)
    atk = robustkit.create_attack("pgd", eps=0.02, steps=3, restarts=2)
    one = atk(model, x, y, generator=sample_generators(4, range(len(x))))

    def oom(*args, **kwargs):
        x_ = args[2]
        make_threat("Linf", 0.02).init(x_, args[5])  # consumes the generators, then fails
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(pgd_mod, "stack_in_batch", lambda x: True)
    monkeypatch.setattr(pgd_mod.PGD, "_stacked", lambda self, *a: oom(self, *a))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    again = atk(model, x, y, generator=sample_generators(4, range(len(x))))
    assert torch.equal(one.x_adv, again.x_adv)


def test_no_parameter_gradients_and_no_host_sync_per_step(monkeypatch):
    """The step loop synchronizes only at the log2(steps) compaction checks."""
    model, (x, y) = _double_net(), _data(8)
    calls = {"n": 0}
    real = torch.Tensor.__int__

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "__int__", counting)
    _ascend(model, x, y, compact=True, steps=16, eps=0.001)
    assert calls["n"] <= 3  # checks after 2, 4, 8 steps
    assert all(p.grad is None for p in model.parameters())


def test_fastmodel_options_and_reference():
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
    assert make_fastpath().wrap(net) is net  # nothing on: the model itself
    plain = make_fastpath().precisions(net)
    assert plain.fast is net and plain.fp32 is net and plain.reference is net and plain.tolerance == 0
    models = make_fastpath(channels_last=True, amp="bf16").precisions(net)
    fast = models.fast
    assert isinstance(fast, FastModel) and models.reference is net and models.tolerance == BF16_TOLERANCE
    assert models.at("any") is fast and models.at("fp32") is models.fp32 is not fast
    with pytest.raises(ConfigError, match="precision"):
        models.at("fp16")
    with torch.no_grad():
        out = fast(x)
        assert torch.allclose(models.fp32(x), ref, atol=1e-5)  # autocast off, channels_last kept
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1) and not torch.equal(out, ref)  # bf16: close, not exact
    # channels_last converts the fast path's own copy; the user's weights keep their memory format
    assert fast.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net.features[0].weight.is_contiguous()
    assert not {id(p) for p in fast.parameters()} & {id(p) for p in net.parameters()}
    # without channels_last nothing is converted: the wrapper shares the model's parameters
    shared = make_fastpath(amp="bf16").wrap(net)
    assert {id(p) for p in shared.parameters()} == {id(p) for p in net.parameters()}
    assert make_fastpath(amp="bf16").precisions(net).tolerance == BF16_TOLERANCE
    assert make_fastpath(fold_bn=True).precisions(net).tolerance == 0.0
    compiled = make_fastpath(compile="eager").wrap(net)
    with torch.no_grad():
        assert torch.allclose(compiled(x), ref, atol=1e-6)
    with pytest.raises(ConfigError):
        make_fastpath(amp="fp8")


def test_bf16_attack_success_is_rechecked_in_fp32():
    """A decision that hinges on less than bf16's resolution: bf16 claims a success that fp32 refutes."""

    class Knife(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 12))

        def forward(self, x):
            s = nn.functional.linear(x.flatten(1), self.w).float()  # bf16 under autocast: 11.953 -> 11.9375
            return torch.cat([torch.zeros_like(s), (s - 11.945) * 100], 1)

    x = torch.full((2, 3, 2, 2), 1 - 1 / 255)
    y = torch.ones(2, dtype=torch.long)  # fp32: sum 11.953 > 11.945, class 1, correct
    net = Knife().eval()
    models = make_fastpath(amp="bf16").precisions(net)
    fast = models.fast
    with torch.no_grad():
        assert (net(x).argmax(1) == y).all()
        assert (fast(x).argmax(1) != y).all()  # bf16 rounds the sum down: a false "success"
    assert (fp32_logits(models.reference, x).argmax(1) == y).all()  # the runner's recheck: fp32
    assert not confirm(models.reference, None, x, x, y).confirmed.any()
    # the runner's criterion carries the bf16 tolerance (this knife fools even that margin) ...
    criterion = Misclassification(margin=models.tolerance)
    with torch.no_grad():
        assert models.tolerance > 0 and criterion(fast(x), y).all()
    # ... and PGD behind the fast path gives its verdict with the fp32 reference
    judged = dict(criterion=criterion, precisions=models, generator=torch.Generator())
    res = robustkit.create_attack("pgd", eps=1e-6, steps=2)(fast, x, y, **judged)
    assert not res.success.any()
    plain = robustkit.create_attack("pgd", eps=1e-6, steps=2)(net, x, y, generator=torch.Generator())
    assert not plain.success.any()
    for name in ("apgd-ce", "fab"):  # likewise the other gradient attacks report the fp32 verdict
        res = robustkit.create_attack(name, eps=1e-6, steps=2)(fast, x, y, **judged)
        assert not res.success.any(), name
    ensemble = robustkit.create_attack(
        "autoattack", eps=1e-6, steps=2, queries=5, version=["apgd-ce", "fab", "square"]
    )
    res = ensemble(fast, x, y, **judged)
    assert not res.success.any() and res.artifacts["cascade"][0]["rejected"] == 0
    # attacks never ask the model what it is: told nothing, PGD takes the bf16 model at its word
    blind = robustkit.create_attack("pgd", eps=1e-6, steps=2)(fast, x, y, generator=torch.Generator())
    assert blind.success.all()
    with pytest.raises(ConfigError, match="precisions.fast"):
        robustkit.create_attack("pgd", eps=1e-6, steps=2)(net, x, y, precisions=models)


def test_square_queries_the_fp32_model_behind_the_fast_path(monkeypatch):
    model, (x, y) = _double_net(), _data(6)
    atk = robustkit.create_attack("square", eps=0.05, queries=30)
    ref = atk(model, x, y, generator=sample_generators(0, range(6)))
    models = make_fastpath(amp="bf16").precisions(model)
    real = FastModel.forward

    def guarded(self, x, amp=True):
        assert not amp, "Square ran the bf16 model"
        return real(self, x, amp)

    monkeypatch.setattr(FastModel, "forward", guarded)
    res = atk(models.fast, x, y, precisions=models, generator=sample_generators(0, range(6)))
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)
    # the same inside AutoAttack, which hands each stage the model at the precision it declares
    aa = robustkit.create_attack("autoattack", eps=0.05, version=["square"], queries=30)
    model, x = model.float(), x.float()  # its confirmation runs in fp32
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample clean-correct: every one is attacked
    ref = aa(model, x, y, generator=sample_generators(0, range(6)))
    models = make_fastpath(amp="bf16").precisions(model)
    res = aa(models.fast, x, y, precisions=models, generator=sample_generators(0, range(6)))
    assert res.artifacts["cascade"][0]["attacked"] == 6
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)


def test_fastpath_attack_runs_under_bf16_and_channels_last(shapes_model, shapes_test):
    x, y = shapes_test.x[:16], shapes_test.y[:16]
    # the session model may carry .grad from other tests (ART's estimators leave parameter gradients)
    before = [None if p.grad is None else p.grad.clone() for p in shapes_model.parameters()]
    models = make_fastpath(channels_last=True, amp="bf16").precisions(shapes_model)
    res = robustkit.create_attack("pgd", eps=8 / 255, steps=5)(
        models.fast, x, y, criterion=Misclassification(margin=models.tolerance), precisions=models,
        generator=sample_generators(0, range(16)),
    )  # fmt: skip
    pred = fp32_logits(models.reference, res.x_adv).argmax(1)
    assert ((res.x_adv - x).abs().amax() <= 8 / 255 + 1e-6) and (pred != y).float().mean() > 0.5
    assert torch.equal(pred != y, res.success)  # the reported success is the fp32 verdict
    after = [p.grad for p in shapes_model.parameters()]
    assert all(
        (a is None) == (b is None) and (a is None or torch.equal(a, b))
        for a, b in zip(before, after, strict=True)
    )
    assert all(p.is_contiguous() for p in shapes_model.parameters())  # not converted in place


def test_profile_and_evaluate_flags(tmp_path, shapes_model):
    from robustkit.api import evaluate
    from robustkit.evaluation.profile import format_profile, profile_run

    suite = {
        "name": "t",
        "attacks": [{"attack": "pgd", "eps": 2 / 255, "steps": 3}, {"attack": "fgsm", "eps": 2 / 255}],
    }
    res = evaluate(shapes_model, "shapes", suite, out=tmp_path, limit=12, batch_size=6, progress=False,
                   report=False, amp="bf16", channels_last=True, fold_bn=True, profile=True)  # fmt: skip
    import yaml

    fastpath = yaml.safe_load((res.run_dir / "config.yaml").read_text())["fastpath"]
    assert fastpath == {"channels_last": True, "compile": False, "amp": "bf16", "fold_bn": True}
    prof = json.loads((res.run_dir / "profile.json").read_text())
    names = [r["name"] for r in prof["rows"]]
    assert names[0] == "clean pass" and "pgd" in names[1] and names[-1].startswith("other")
    pgd_row = prof["rows"][1]
    assert pgd_row["backward"] >= 2 and pgd_row["forward"] >= pgd_row["backward"] and pgd_row["seconds"] > 0
    assert prof["pass_costs"]["t_fwd"] > 0 and pgd_row["overhead_est"] > 0
    assert res.summary["profile"]["rows"] == prof["rows"]
    assert json.loads((res.run_dir / "summary.json").read_text())["profile"]["rows"] == prof["rows"]
    text = format_profile(profile_run(res.run_dir, write=False))
    assert "clean pass" in text and "total" in text
    assert shapes_model.training is False
    assert all(p.is_contiguous() for p in shapes_model.parameters())  # the fast path converted a copy


def test_benchmark_helpers_measure_memory_and_time():
    from benchmarks.common import compare, input_gradient_pass, peak_memory, ratio

    model, (x, y) = _double_net(), _data(8)
    small = peak_memory(lambda: input_gradient_pass(model, x[:2], y[:2]), "cpu")
    big = peak_memory(lambda: input_gradient_pass(model, x, y), "cpu")
    assert 0 < small < big
    t = compare({"a": lambda: input_gradient_pass(model, x, y), "b": lambda: None}, device="cpu", reps=3)
    assert len(t["a"].times) == 3 and ratio(t, "a", "a")["median"] == 1.0


def test_peak_memory_counts_new_storage_only_and_pgd_holds_one_iterate():
    """The tracker does not count views of tensors that existed before (the bare pass's input), and
    PGD's peak is one bare pass plus its single iterate buffer: no best-iterate copy, no per-step
    input-sized temporaries."""
    from benchmarks.common import input_gradient_pass, peak_memory

    model, (x, y) = _double_net(), _data(16)
    assert peak_memory(lambda: x.detach().view(-1).add_(0), "cpu") == 0
    assert peak_memory(lambda: x + 0, "cpu") == x.numel() * x.element_size()
    bare = peak_memory(lambda: input_gradient_pass(model, x, y), "cpu")
    attack = robustkit.create_attack("pgd", eps=1e-4, steps=6)
    pgd = peak_memory(lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0)), "cpu")
    one_input = x.numel() * x.element_size()
    assert bare + one_input <= pgd <= bare + one_input + 4096
    torch.manual_seed(0)  # the same for video-pgd on clips
    video = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()  # fmt: skip
    clips = torch.rand(6, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = video(clips).argmax(1)
    bare = peak_memory(lambda: input_gradient_pass(video, clips, labels), "cpu")
    attack = robustkit.create_attack("video-pgd", eps=1e-4, steps=4)
    pgd = peak_memory(lambda: attack(video, clips, labels, generator=torch.Generator().manual_seed(0)), "cpu")
    one_clip = clips.numel() * clips.element_size()
    assert bare + one_clip <= pgd <= bare + one_clip + 4096


def test_confirm_checks_the_verdict_in_fp32_and_the_bound():
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    net = TinyNet().train()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)  # the model as given: BatchNorm in train mode, batch statistics
        assert not torch.equal(copy.deepcopy(net).eval()(x).argmax(1), y)  # eval mode is another model
    buffers = [b.clone() for b in net.buffers()]
    threat = make_threat("Linf", 0.1)
    x_adv = x.clone()
    x_adv[1] = (x[1] + 0.2).clamp(0, 1)  # outside the ball
    x_adv[2, 0, 0, 0] = 1.5  # outside the box
    check = confirm(net, threat, x, x_adv, y)
    assert net.training  # judged in the mode it was given, never .eval() behind the user's back
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))  # statistics kept
    assert check.within.tolist() == [True, False, False, True]
    assert torch.equal(check.adversarial, check.logits.argmax(1) != y)
    assert torch.equal(check.confirmed, check.adversarial & check.within)
    assert not confirm(net, threat, x, x, y).adversarial.any()  # the clean inputs: train-mode labels
    targeted = confirm(net, threat, x, x, y, criterion=TargetedMisclassification(y))
    assert targeted.confirmed.all()
    assert confirm(net, None, x, x_adv, y).within.all()  # no Lp bound: only the verdict counts
    counter = Counter()
    confirm(net, threat, x, x, y, counter=counter)
    assert (counter.forward, counter.queries) == (1, 4)


def test_success_tolerance_needs_a_clear_margin():
    logits = torch.tensor([[1.0, 0.99, -10.0], [1.0, 2.0, 0.0], [1.0, 0.0, 0.9]])
    y = torch.tensor([1, 0, 0])
    assert is_success(logits, y, None).tolist() == [True, True, False]
    assert is_success(logits, y, None, 0.03).tolist() == [False, True, False]  # 0.01 < 0.03 * 10
    target = torch.tensor([0, 1, 2])
    assert is_success(logits, y, target, 0.03).tolist() == [False, True, False]
    # the criteria objects decide the same
    assert Misclassification()(logits, y).tolist() == [True, True, False]
    assert Misclassification(margin=0.03)(logits, y).tolist() == [False, True, False]
    targeted = TargetedMisclassification(target, margin=0.03)
    assert targeted(logits, y).tolist() == [False, True, False]
    assert targeted.with_margin(0.0)(logits, y).tolist() == [True, True, False]
    assert targeted(logits[1:], y[1:], target[1:]).tolist() == [True, False]  # a subset names its targets
    with pytest.raises(ConfigError, match="margin"):
        Misclassification(margin=-0.1)


def _bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 4),
    )  # fmt: skip
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            net(torch.rand(16, 3, 8, 8))
    return net.eval()


def test_fold_bn_same_function_refolds_on_change_and_respects_train_mode():
    net = _bn_net()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fast = make_fastpath(fold_bn=True).wrap(net)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)
    folded = fast._folded[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(not p.requires_grad for p in folded.parameters())
    y = net(x).argmax(1)
    robustkit.create_attack("pgd", eps=0.05, steps=3)(fast, x, y, generator=torch.Generator())
    assert fast._folded[0] is folded  # the attack's state restore does not force a refold
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        net[1].running_var.mul_(4)  # a changed buffer: refolded
        assert torch.allclose(fast(x), net(x), atol=1e-5) and fast._folded[0] is not folded
        net[0].weight.mul_(-1)  # a changed parameter: refolded
        assert torch.allclose(fast(x), net(x), atol=1e-5)
        net[0].bias = nn.Parameter(net[0].bias + 1)  # a replaced parameter: refolded
        assert torch.allclose(fast(x), net(x), atol=1e-5)
    net.train()  # batch statistics cannot be folded: the reference runs
    with torch.no_grad():
        assert torch.equal(fast(x), net(x))


def _state(net: nn.Module) -> list:
    """Everything of ``net`` an attack or the fast path could change, strides and storage included."""
    params = [
        (n, p.detach().clone(), p.stride(), p.data_ptr(), p.requires_grad, None if p.grad is None else p.grad.clone())
        for n, p in net.named_parameters()
    ]  # fmt: skip
    buffers = [(n, b.clone(), b.stride(), b.data_ptr()) for n, b in net.named_buffers()]
    return [params, buffers, [(n, m.training) for n, m in net.named_modules()]]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def test_fast_path_leaves_the_users_model_untouched():
    """Building the fast path with every option on and attacking through it changes nothing in the
    user's model: parameter values, strides (memory format), storage, requires_grad, .grad, buffers and
    training flags are as they were."""
    net = _bn_net()
    net[0].bias.requires_grad_(False)  # mixed requires_grad
    net[2].train()  # a training flag unlike its parent's
    net[5].weight.grad = torch.full_like(net[5].weight, 0.5)  # a gradient the user keeps
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    before = _state(net)
    models = make_fastpath(channels_last=True, fold_bn=True, amp="bf16", compile="eager").precisions(net)
    assert _same(_state(net), before)  # building it converts nothing
    judged = dict(criterion=Misclassification(margin=models.tolerance), precisions=models)
    for name, fields in [("pgd", {"steps": 3}), ("apgd-ce", {"steps": 3}), ("fab", {"steps": 3}),
                         ("square", {"queries": 10}), ("autoattack", {"steps": 2, "queries": 5})]:  # fmt: skip
        atk = robustkit.create_attack(name, eps=0.05, **fields)
        atk(models.fast, x, y, generator=sample_generators(0, range(6)), **judged)
        assert _same(_state(net), before), name
    with torch.no_grad():
        models.fast(x), models.fp32(x)
    confirm(models.reference, make_threat("Linf", 0.05), x, x, y)
    assert _same(_state(net), before)
    assert net[0].weight.is_contiguous() and not net[0].weight.is_contiguous(
        memory_format=torch.channels_last
    )


def test_fold_bn_falls_back_on_a_model_fx_cannot_trace(caplog):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _bn_net()

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)  # data-dependent: not traceable

    net = Branchy().eval()
    x = torch.rand(2, 3, 8, 8)
    fast = make_fastpath(fold_bn=True).wrap(net)
    with torch.no_grad(), caplog.at_level("WARNING"):
        assert torch.equal(fast(x), net(x))
    assert "runs unfolded" in caplog.text


@pytest.mark.parametrize(
    "name,fields,eps",
    [
        ("apgd-t", {"n_targets": 3, "restarts": 2}, 0.03),
        ("apgd-ce", {"restarts": 3}, 0.03),
        ("fab-t", {"n_targets": 3, "restarts": 2}, 0.06),
        ("fab", {"restarts": 3}, 0.06),
    ],
)
def test_stacked_runs_equal_one_by_one(monkeypatch, name, fields, eps):
    """On CUDA every (target, restart) run of APGD and FAB goes into one batch; the result is the
    one-by-one loop's, sample for sample (checked here on the CPU by forcing the stacked path)."""
    from robustkit.attacks import apgd as apgd_mod
    from robustkit.attacks import fab as fab_mod
    from robustkit.attacks import lp as lp_mod

    mod, run, stacked_arg = (
        (fab_mod, "fab_run", "offset") if "fab" in name else (apgd_mod, "apgd_run", "start")
    )
    model, (x, y) = _double_net(), _data(16)
    atk = robustkit.create_attack(name, eps=eps, steps=5, **fields)
    one = atk(model, x, y, generator=sample_generators(5, range(len(x))))
    assert 0 < int(one.success.sum()) < len(x)  # some broken, some not: both selection rules matter
    monkeypatch.setattr(lp_mod, "stack_in_batch", lambda x: True)  # SweepAttack.run decides
    stacked = atk(model, x, y, generator=sample_generators(5, range(len(x))))
    assert torch.equal(one.success, stacked.success) and torch.equal(one.x_adv, stacked.x_adv)

    real = getattr(mod, run)

    def stacked_runs_oom(*args, **kwargs):  # the stacked batch (after its draws) does not fit
        if kwargs.get(stacked_arg) is not None:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, run, stacked_runs_oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    again = atk(model, x, y, generator=sample_generators(5, range(len(x))))
    assert torch.equal(one.x_adv, again.x_adv)  # one by one, from the same draws


def test_benchmark_table_of_the_recorded_run():
    """The recorded run_all.json re-tabulates to the table it holds, verdicts included."""
    from pathlib import Path

    from benchmarks.run_all import TARGETS, markdown, rows

    res = json.loads((Path(__file__).parent.parent / "benchmarks/results/run_all.json").read_text())
    table = rows(res)
    assert table == res["table"]
    assert {r["section"] for r in table} == {"1 overhead", "2 pgd", "3 ensemble", "4 patch", "5 memory"}
    for r in table:
        if r["target"]:
            op, bound = next((op, b) for what, op, b in TARGETS.values() if f"{op} {b:g}" in r["target"])
            ok = r["value"] <= bound if op == "<=" else r["value"] >= bound
            assert r["target"].startswith("ok" if ok else "MISS"), r
    text = markdown(res, ["--threads", "2"])
    assert text.count("\n| ") == len(table) + 2 and res["environment"]["bf16"] in text
