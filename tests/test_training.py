"""The one training loop: the zoo's recipe (SGD, one-cycle, one data-order stream) gives exactly the
weights of the plain loop it replaced, and a schedule bound after a resume continues where it stopped."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from robustkit.builtin.shapes import shapes
from robustkit.training.loop import fit
from robustkit.training.schedule import OneCycle, WarmupLinear, lr_at
from robustkit.training.seeding import fixed_seed
from robustkit.training.settings import TrainSettings


def tiny() -> nn.Module:
    with fixed_seed(5):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
        )


def reference_loop(model: nn.Module, train, epochs: int, batch_size: int, lr: float) -> None:
    """The zoo's former loop, verbatim in substance."""
    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def test_zoo_recipe_reproduces_the_former_loop_bit_for_bit():
    train = shapes("train", n=96)
    a, b = tiny(), tiny()
    reference_loop(a, train, epochs=2, batch_size=32, lr=0.1)
    settings = TrainSettings(
        epochs=2, batch_size=32, optimizer="sgd", lr=0.1, weight_decay=5e-4, train_size=None
    )
    state = fit(
        b,
        train,
        settings,
        device=torch.device("cpu"),
        schedule=OneCycle(0.25),
        order="one-stream",
        progress=False,
    )
    assert state["step"] == 6 and len(state["history"]) == 2
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_schedules_continue_after_a_resume():
    net = nn.Linear(2, 2)
    for schedule in (OneCycle(0.3), WarmupLinear(0.2)):
        straight = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.9)
        resumed = copy.deepcopy(straight)
        run, later = schedule.bind(straight, 0.5, 10), None
        for step in range(10):
            run(step)
            if step == 6:
                later = schedule.bind(resumed, 0.5, 10)
                later(step)
                assert resumed.param_groups[0]["lr"] == straight.param_groups[0]["lr"]
                assert resumed.param_groups[0]["momentum"] == straight.param_groups[0]["momentum"]
    assert lr_at(0, 10, 1.0, 0.2) == 0.5 and lr_at(9, 10, 1.0, 0.2) == 1.0 / 8
