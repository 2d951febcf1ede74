"""BPDA on saturating and clamped outputs, success judged on the deployed model, the flat-loss finding,
and EOT inside PGD and FGSM.

A tiny classifier (trained here with a fixed seed, confident: logit margins of about 10) is deployed
behind a head that saturates: (a) clamped temperature-scaled log-probabilities, (b) tanh of the
temperature-scaled logit gaps. Both heads keep the classifier's predictions and make its output
constant on confident samples, so every loss computed on it is flat while BPDA lets gradients through.
The truth is the attack on the classifier's own logits, judged on the deployed model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.apgd import APGDCE, APGDT
from robustkit.attacks.autoattack import AutoAttack
from robustkit.attacks.fab import FAB
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.defenses.adaptive import adapt
from robustkit.defenses.base import Capabilities, as_defense
from robustkit.evaluation.metrics import loss_trace
from robustkit.evaluation.sanity import run_sanity_checks
from robustkit.evaluation.store import Outcome
from robustkit.models.fastpath import Precisions

K = 4
EPS = 38 / 255  # the classifier's truth is about 20 % here (APGD-CE on its logits)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    proto = torch.rand(K, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % K
    noise = 0.15 * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return (proto[y] * 0.6 + 0.2 + noise).clamp(0, 1), y


class ClampedLogProbs(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(10 * z, dim=1).clamp(min=-5)


class TanhGaps(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(5 * (z - z.amax(1, keepdim=True)))


class Deployed(nn.Module):
    def __init__(self, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


class Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input, a fresh draw on every call."""

    def __init__(self, net: nn.Module, sigma: float) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="module")
def net(one_thread) -> nn.Module:
    torch.manual_seed(0)
    x, y = _data(512, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, K))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _data(200, 3)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _adapted(net: nn.Module, head: nn.Module, x: torch.Tensor):
    defense = as_defense(Deployed(net, head), capabilities=Capabilities(non_differentiable=("head",)))
    return adapt(defense, probe=x[:8])


@pytest.mark.parametrize("head", [ClampedLogProbs(), TanhGaps()], ids=["clamped-log-probs", "tanh-gaps"])
def test_attack_through_the_surrogate_lands_on_the_truth(net, data, head):
    x, y = data
    a = _adapted(net, head, x)
    assert a.attack_model is not a.model  # the head produces the output: the attack model skips it
    assert bool(_robust(a.model, x, y).all())
    attacks = [APGDCE(eps=EPS, steps=50), PGD(eps=EPS, steps=50)]
    # the truth: the same attacks on the classifier's own logits, judged on the deployed model
    truth = min(
        float(_robust(a.model, A(net, x, y, generator=_gen()).x_adv, y).float().mean()) for A in attacks
    )
    assert 0.1 < truth < 0.4, truth
    precisions = Precisions.adapted(a.attack_model, a.model)
    assert precisions.surrogate and not Precisions.adapted(net, net).surrogate
    for attack in attacks:
        res = attack(precisions.fast, x, y, precisions=precisions, generator=_gen())
        robust = _robust(a.model, res.x_adv, y)
        assert torch.equal(~res.success, robust), attack.name  # success as the deployed model decides it
        assert abs(float(robust.float().mean()) - truth) <= 0.05, (
            attack.name,
            float(robust.float().mean()),
            truth,
        )
        # naive: BPDA through the head, but the loss on its saturated output
        naive = attack(a.model, x, y, generator=_gen())
        naive_acc = float(_robust(a.model, naive.x_adv, y).float().mean())
        assert naive_acc >= truth + 0.15, (attack.name, naive_acc, truth)


class Biased(nn.Module):
    """A head that changes predictions: the deployed model favours class 0."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + torch.tensor([9.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "attack",
    [
        APGDCE(eps=EPS, steps=20),
        APGDT(eps=EPS, steps=10, n_targets=2),
        PGD(eps=EPS, steps=10),
        FGSM(eps=EPS),
        FAB(eps=EPS, steps=10),
        AutoAttack(eps=EPS, version=["apgd-ce", "fab-t"], steps=10),
        AutoAttack(eps=EPS, version=["square"], queries=200),
    ],
    ids=lambda a: type(a).__name__,
)
def test_success_is_decided_on_the_deployed_model(net, data, attack):
    """The surrogate's logits give the loss; every reported success is the deployed model's verdict."""
    x, y = data
    a = _adapted(net, Biased(), x)
    precisions = Precisions.adapted(a.attack_model, a.model)
    res = attack(precisions.fast, x, y, precisions=precisions, generator=_gen())
    with torch.no_grad():
        deployed, surrogate = a.model(res.x_adv).argmax(1), a.attack_model(res.x_adv).argmax(1)
    assert bool((deployed != surrogate).any())  # the two disagree: the test can tell them apart
    broken = deployed != y
    if isinstance(attack, FAB):  # FAB returns the clean input where it found nothing
        assert bool((res.success <= broken).all())
        assert bool(res.success[~_robust(a.model, x, y)].all())  # misclassified on the deployed model
    else:
        assert torch.equal(res.success, broken)


def _summary(name: str, result, robust: torch.Tensor) -> dict:
    """The runner's summary entry of one attack, from its per-sample metrics (as the store keeps them)."""
    metrics = {k: v.tolist() for k, v in result.metrics.items()}
    outcomes = [
        Outcome(i, True, bool(result.success[i]), bool(robust[i]), 0, 1.0,
                metrics={k: v[i] for k, v in metrics.items()})
        for i in range(robust.shape[0])
    ]  # fmt: skip
    return {"attacks": [{"name": name, "attack": name, "loss_trace": loss_trace(outcomes)}]}


def test_flat_loss_finding_fires_on_the_naive_attack_and_stays_quiet_otherwise(net, data):
    x, y = data
    a = _adapted(net, ClampedLogProbs(), x)
    precisions = Precisions.adapted(a.attack_model, a.model)
    cases = {
        "naive": (a.model, {}),  # BPDA through the head, loss on the saturated output
        "adapted": (precisions.fast, {"precisions": precisions}),
        "sound": (net, {}),  # the classifier itself
    }
    status = {}
    for case, (model, kw) in cases.items():
        for label, attack in (("apgd-ce", APGDCE(eps=EPS, steps=50)), ("pgd", PGD(eps=EPS, steps=50))):
            res = attack(model, x, y, generator=_gen(), **kw)
            assert set(res.metrics) >= {"loss_gain", "grad_norm"}
            assert res.metrics["loss_gain"].shape == (x.shape[0],)
            ctx = {
                "summary": _summary(label, res, _robust(a.model, res.x_adv, y)),
                "run_attacks": False,
            }
            (finding,) = run_sanity_checks(a.model, x, y, context=ctx, checks=["flat-loss"])
            status[case, label] = finding
    for attack in ("apgd-ce", "pgd"):
        fired = status["naive", attack]
        assert fired.status == "fail", fired.evidence
        assert "non_differentiable" in fired.advice
        assert fired.values["flat"] >= 0.5 * fired.values["robust"] > 0
        for quiet in ("adapted", "sound"):
            assert status[quiet, attack].status == "pass", (quiet, status[quiet, attack].evidence)
            assert status[quiet, attack].values["flat"] == 0


def test_flat_loss_finding_from_a_real_run(net, data, tmp_path):
    """The runner stores the per-sample metrics and hands the summary to the check."""
    from robustkit.api import evaluate

    x, y = data
    a = _adapted(net, TanhGaps(), x)
    suite = {"name": "flat", "attacks": [{"attack": "apgd-ce", "eps": "38/255", "steps": 50}]}
    found = {}
    for name, model in (("naive", a.model), ("sound", net)):
        res = evaluate(model=model, data=(x[:64], y[:64]), num_classes=K, suite=suite, out=tmp_path, name=name, device="cpu",
                       progress=False, report=False)  # fmt: skip
        found[name] = {f["name"]: f for f in res.summary["findings"]}["flat-loss"]
    assert found["naive"]["status"] == "fail", found["naive"]
    assert found["sound"]["status"] == "pass", found["sound"]


def test_pgd_with_eot_beats_pgd_without_on_a_randomized_model(net, data):
    x, y = data
    x, y = x[:100], y[:100]
    model = Noisy(net, 0.3)

    def accuracy(x_adv: torch.Tensor) -> float:  # the deployed random model, 10 fresh draws
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(float((model(x_adv).argmax(1) == y).float().mean()) for _ in range(10)) / 10

    robust = {}
    for eot in (1, 20):
        torch.manual_seed(0)
        res = PGD(eps=32 / 255, steps=20, eot_samples=eot)(model, x, y, generator=_gen())
        assert res.counters["backward"] == 20 * eot
        robust[eot] = accuracy(res.x_adv)
    assert robust[20] <= robust[1] - 0.1, robust


@pytest.mark.parametrize("attack", [PGD(eps=EPS, steps=5), FGSM(eps=EPS)], ids=lambda a: type(a).__name__)
def test_eot_on_a_deterministic_model_is_the_plain_attack(net, data, attack):
    """The mean of identical gradients points where each does: same signed steps, eot_samples passes each."""
    x, y = data
    plain = attack(net, x, y, generator=_gen())
    eot = attack.replace(eot_samples=5)(net, x, y, generator=_gen())
    assert torch.equal(plain.x_adv, eot.x_adv)
    assert eot.counters["backward"] == 5 * plain.counters["backward"]
    with pytest.raises(Exception, match="eot_samples"):
        attack.replace(eot_samples=0)


def test_judge_decides_on_the_reference_behind_a_surrogate(net, data):
    """Behind a surrogate an attack's in-loop decision is one no-grad forward of the deployed model; with
    one model it is the criterion on the logits the attack already has (no extra pass)."""
    from robustkit.attacks.base import Counter, Judge
    from robustkit.attacks.criteria import Misclassification

    x, y = data
    a = _adapted(net, Biased(), x)
    with torch.no_grad():
        logits = a.attack_model(x)
        deployed = a.model(x).argmax(1) != y
    assert not torch.equal(logits.argmax(1) != y, deployed)
    judge = Judge(Misclassification(), Precisions.adapted(a.attack_model, a.model))
    counter = Counter()
    assert judge.tentative
    assert torch.equal(judge.decide(x, logits, y, None, counter), deployed)
    assert counter.forward == 1
    plain, counter = Judge.of(a.attack_model), Counter()
    assert torch.equal(plain.decide(x, logits, y, None, counter), logits.argmax(1) != y)
    assert counter.forward == 0 and not plain.tentative
