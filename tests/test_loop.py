"""The one ascent loop: keep strategies, PGD's compaction and freezing, per-step ascents, minibatches."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.attacks.base import Counter
from robustkit.attacks.loop import (
    Ascent,
    Final,
    KeepBest,
    ascend,
    gradient_ascent,
    minibatches,
    until_success,
)
from robustkit.functional.losses import get_loss
from robustkit.threat import L2, Linf


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


def data(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 5, (n,), generator=g)


def ce(y):
    fn = get_loss("ce")
    return lambda logits: fn(logits, y, None)


def test_compaction_changes_nothing():
    """PGD's loop drops finished samples from its working batch; the results are those of the loop
    that never compacts (bit for bit under L-inf, whose sign steps do not see the rounding of a smaller
    batch's matrix products), with fewer queries."""
    model, (x, _) = linear(), data(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correctly classified
    for threat in (Linf(eps=16 / 255), L2(eps=0.4)):
        runs = []
        for compact in (False, True):
            counter = Counter()
            start = threat.random_start(x, torch.Generator().manual_seed(2))
            adv, ok = gradient_ascent(
                model, x, y, threat, steps=17, step_size=threat.eps / 4, objective=ce(y), target=None,
                start=start, counter=counter, objective_at=(lambda live: ce(y[live])) if compact else None,
            )  # fmt: skip
            runs.append((adv, ok, counter.queries))
        (a0, s0, q0), (a1, s1, q1) = runs
        assert 0 < int(s0.sum()) < 16  # some samples finish early, some never
        assert torch.equal(s0, s1)
        assert torch.equal(a0, a1) if threat.name == "Linf" else torch.allclose(a0, a1, atol=1e-6)
        assert q1 < q0


def test_first_and_last_success():
    """A sign ascent on a linear model: the first successful input is kept, or the last one."""
    model, (x, y) = linear(), data()

    def run(**keep):
        ascent = Ascent(objective=ce(y), update=lambda p, g, _: (p + 0.05 * g.sign()).clamp(0, 1))
        return until_success(model, x.clone(), ascent, y, None, Counter(), steps=6, **keep)

    first, ok, last_param = run()
    last, ok_last, _ = run(last=True)
    assert torch.equal(ok, ok_last) and bool(ok.any())
    assert torch.equal(last[~ok], last_param[~ok])  # never successful: the final input
    wins = ok & (first != last).flatten(1).any(1)
    assert bool(wins.any())  # succeeded early and stayed successful: first != last
    assert bool((model(first).argmax(1) != y)[ok].all())


def test_early_stop_and_final_check():
    model, (x, y) = linear(), data()
    ascent = Ascent(objective=ce(y), update=lambda p, g, _: (p + 0.5 * g.sign()).clamp(0, 1))
    counter = Counter()
    adv, ok, _ = until_success(model, x.clone(), ascent, y, None, counter, steps=50, early_stop=True)
    assert bool(ok.all()) and counter.backward < 50 and counter.forward == counter.backward


def test_keep_best_keeps_the_highest_gain():
    model, (x, y) = linear(), data()
    seen = []

    def update(p, g, _):
        seen.append(p)
        return (p - 0.1 * g.sign()).clamp(0, 1)  # descends: the start has the highest loss

    ascent = Ascent(objective=ce(y), update=update)
    best = ascend(model, x.clone(), ascent, KeepBest(x.clone()), steps=4, counter=Counter())
    assert torch.equal(best, seen[0])


def test_a_step_function_gives_each_step_its_ascent_and_penalties_shape_the_gradient():
    model, (x, y) = linear(), data()
    order = []

    def step(i: int) -> Ascent:
        order.append(i)
        rows = slice(2 * i, 2 * i + 2)
        return Ascent(
            compose=lambda t: x[rows] + t, objective=lambda logits: ce(y[rows])(logits).mean(),
            update=lambda t, g, _: t + 0.01 * g, regularize=lambda gain, t, _: gain - 10 * t.pow(2).sum(),
        )  # fmt: skip

    out = ascend(model, torch.zeros(1, 3, 4, 4), step, Final(), steps=3, counter=Counter())
    assert order == [0, 1, 2] and out.shape == (1, 3, 4, 4) and bool((out != 0).any())


def test_minibatches():
    g = torch.Generator().manual_seed(0)
    batches = minibatches(10, 4, g, "cpu")
    first = [next(batches) for _ in range(2)]
    assert sorted(torch.cat(first).tolist()) == sorted(set(torch.cat(first).tolist()))  # one epoch: distinct
    assert [b.numel() for b in first] == [4, 4]
    third = next(batches)  # 8 + 4 > 10: a new epoch, a new order
    assert third.numel() == 4
    assert next(minibatches(3, 8, g, "cpu")).numel() == 3
