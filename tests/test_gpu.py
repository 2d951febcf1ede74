"""The CUDA path: the same evaluation on the GPU as on the CPU, and the fast path rechecked in fp32.

Skipped without a CUDA device (see conftest.py); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from robustkit.api import evaluate
from robustkit.attacks import create_attack

pytestmark = pytest.mark.gpu

SUITE = {"name": "gpu", "attacks": [{"attack": "pgd", "eps": ["2/255", "8/255"], "steps": 10}]}


@pytest.fixture
def on_cuda(shapes_model):
    """The session's shapes model on the GPU for one test, back on the CPU for the tests after it."""
    yield shapes_model.to("cuda")
    shapes_model.to("cpu")


def test_pgd_on_cuda_keeps_the_contract(on_cuda, shapes_test):
    model = on_cuda
    x, y = shapes_test.x[:64].cuda(), shapes_test.y[:64].cuda()
    attack = create_attack("pgd", norm="Linf", eps=8 / 255, steps=10)
    result = attack(model, x, y, generator=[torch.Generator().manual_seed(i) for i in range(64)])
    assert result.x_adv.device.type == "cuda"
    assert (
        (result.x_adv - x).abs().max() <= 8 / 255 + 1e-6
        and result.x_adv.min() >= 0
        and result.x_adv.max() <= 1
    )
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y)[result.success].all()


def test_cuda_run_matches_cpu_run_within_a_point(tmp_path, shapes_model):
    common = dict(suite=SUITE, out=tmp_path, limit=256, batch_size=64, progress=False, report=False)
    cpu = evaluate(name="cpu", device="cpu", **common).summary
    gpu = evaluate(name="gpu", device="cuda", **common).summary
    assert gpu["clean_accuracy"] == pytest.approx(cpu["clean_accuracy"], abs=0.01)
    for a, b in zip(cpu["attacks"], gpu["attacks"], strict=True):
        assert b["robust_accuracy"] == pytest.approx(a["robust_accuracy"], abs=0.01), a["name"]


def test_fast_path_on_cuda_is_rechecked_in_fp32(tmp_path, shapes_model):
    common = dict(
        suite=SUITE, out=tmp_path, limit=256, batch_size=64, device="cuda", progress=False, report=False
    )
    plain = evaluate(name="plain", **common).summary
    fast = evaluate(name="fast", fold_bn=True, channels_last=True, amp="bf16", **common).summary
    for a, b in zip(plain["attacks"], fast["attacks"], strict=True):
        # bf16 attacks may be a little weaker, never "stronger" by false successes: all are rechecked
        assert b["robust_accuracy"] == pytest.approx(a["robust_accuracy"], abs=0.03), a["name"]


def test_fast_path_attacks_on_cuda_report_fp32_verdicts_and_leave_the_model_alone(on_cuda, shapes_test):
    """Behind the bf16 fast path on CUDA (every option on), the attacks called as the runner calls them
    report exactly the fp32 reference's verdict on their examples, and the user's weights keep their
    values and memory format."""
    from robustkit.attacks.criteria import Misclassification, fp32_logits
    from robustkit.models.fastpath import make_fastpath

    model = on_cuda
    x, y = shapes_test.x[:64].cuda(), shapes_test.y[:64].cuda()
    before = [(p.detach().clone(), p.stride()) for p in model.parameters()]
    models = make_fastpath(fold_bn=True, channels_last=True, amp="bf16").precisions(model)
    judged = dict(criterion=Misclassification(margin=models.tolerance), precisions=models)
    for name, fields in [
        ("pgd", {"steps": 10, "restarts": 2}),
        ("apgd-ce", {"steps": 10}),
        ("fab", {"steps": 10}),
    ]:
        gens = [torch.Generator().manual_seed(i) for i in range(64)]
        res = create_attack(name, eps=4 / 255, **fields)(models.fast, x, y, generator=gens, **judged)
        fp32_wrong = fp32_logits(models.reference, res.x_adv).argmax(1) != y
        if name == "fab":  # FAB claims only what it found within the budget, confirmed in fp32
            assert not (res.success & ~fp32_wrong).any(), name
        else:  # the verdict itself is that fp32 pass (on a sub-batch after restarts: 1 flip of slack)
            assert int((res.success != fp32_wrong).sum()) <= 1, name
    assert all(
        torch.equal(p, v) and p.stride() == s for p, (v, s) in zip(model.parameters(), before, strict=True)
    )


@pytest.mark.parametrize("name", ["apgd-t", "fab-t"])
def test_targeted_stages_stacked_on_cuda_match_one_by_one(on_cuda, shapes_test, name, monkeypatch):
    """APGD-T and FAB-T stack their target runs into one batch on CUDA; run one by one they break the
    same samples. Compared in IEEE fp32 (``ieee_fp32``): by default cuDNN runs fp32 convolutions in TF32
    and picks other algorithms for the 3x larger stacked batch, and FAB's projections amplify those 1e-3
    differences (H200, TF32 on: FAB-T broke 45 of 64 stacked vs 47 on the CPU one by one, and stacked vs
    one by one on the GPU also differed by more than one sample)."""
    from robustkit.attacks import lp as lp_mod
    from robustkit.attacks.criteria import ieee_fp32

    x, y = shapes_test.x[:64], shapes_test.y[:64]
    attack = create_attack(name, eps=4 / 255, steps=10, n_targets=3)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(64)]  # noqa: E731
    with ieee_fp32("cuda"):
        gpu = attack(on_cuda, x.cuda(), y.cuda(), generator=gens())
        monkeypatch.setattr(lp_mod, "stack_in_batch", lambda x: False)
        serial = attack(on_cuda, x.cuda(), y.cuda(), generator=gens())
    assert gpu.counters["forward"] < serial.counters["forward"]  # the stacked run: one batch for every target
    assert int((serial.success != gpu.success).sum()) <= 1
    cpu = attack(on_cuda.to("cpu"), x, y, generator=gens())
    assert abs(int(cpu.success.sum()) - int(gpu.success.sum().cpu())) <= 1
    assert (gpu.x_adv.cpu() - x).abs().max() <= 4 / 255 + 1e-6
