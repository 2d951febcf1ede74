"""NoFrost on timm's own NF-ResNets: the network, the official recipe, the eval-mode inner attack, the BN
control, and one tiny training epoch of each recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.defenses.adversarial import adversarial_batch, pgd_examples
from robustkit.defenses.backbones import DataSpec, build_backbone
from robustkit.defenses.base import DEFENSES
from robustkit.defenses.loading import train_defense
from robustkit.defenses.nofrost import NF_SMALL, hybrid_loss, normalization_layers
from robustkit.errors import ConfigError
from robustkit.training.settings import StepContext, TrainSettings

torch.set_num_threads(1)

SPEC = DataSpec("shapes", 10, (3, 32, 32))


def test_the_default_network_is_timms_normfreenet_without_normalization():
    from timm.layers import DropPath, ScaledStdConv2d
    from timm.models.nfnet import NormFreeBlock, NormFreeNet

    recipe = DEFENSES.create("nofrost")
    model = recipe.build(SPEC, recipe.settings)
    net = model.model
    assert isinstance(net, NormFreeNet) and normalization_layers(net) == []
    assert [n for n, _ in net.stem.named_children()] == ["center", "conv", "pool"]
    assert all(isinstance(m, ScaledStdConv2d) for m in net.modules() if isinstance(m, nn.Conv2d))
    blocks = [m for m in net.modules() if isinstance(m, NormFreeBlock)]
    assert len(blocks) == 4 and all(b.alpha == pytest.approx(0.2) for b in blocks)
    # the official recipe's regularizers: drop path (timm's stage-wise linear rates up to 0.1), dropout 0.25
    assert all(isinstance(b.drop_path, DropPath) for b in blocks[1:])
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert net.head.drop.p == pytest.approx(0.25)
    # small-image stem: the stages see 32, 16, 8 and 4 pixels of a 32x32 image
    sizes = []
    hooks = [s.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for s in net.stages]
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sizes == [32, 16, 8, 4]
    for h in hooks:
        h.remove()


def test_timm_names_reach_the_nf_resnets():
    import timm
    from timm.models.nfnet import NormFreeNet

    assert isinstance(timm.create_model(NF_SMALL, num_classes=3), NormFreeNet)
    net = build_backbone(SPEC, "timm:nf_resnet26")
    assert isinstance(net, NormFreeNet) and normalization_layers(net) == []
    recipe = DEFENSES.create("nofrost")
    model = recipe.build(SPEC, recipe.settings.overridden(arch="timm:nf_resnet26"))
    assert isinstance(model.model, NormFreeNet) and model.model.head.drop.p == pytest.approx(0.25)


def test_nofrost_official_is_the_official_recipe():
    """PGDAT.py of amazon-science/normalizer-free-robust-training: SGD + Nesterov 0.9, lr 0.1 x 256/256,
    weight decay 5e-5, cosine without warm-up, label smoothing 0.1, drop path 0.1, dropout 0.25, eval-mode
    PGD-10 of step min(1.25 eps, eps + 4) / steps = 1/255 at eps 8/255, 90 epochs of 256."""
    recipe = DEFENSES.create("nofrost-official")
    s = recipe.settings
    assert (s.optimizer, s.nesterov, s.momentum, s.lr, s.weight_decay) == ("sgd", True, 0.9, 0.1, 5e-5)
    assert (s.schedule, s.warmup, s.label_smoothing, s.drop_path, s.attack_mode) == (
        "cosine",
        0.0,
        0.1,
        0.1,
        "eval",
    )
    assert (s.eps, s.steps, s.step_size, s.eps_warmup) == (8 / 255, 10, 1 / 255, 0.0)
    assert (s.epochs, s.batch_size, s.train_size, recipe.drop_rate) == (90, 256, None, 0.25)


# which words in a recipe's departures name a change of each setting
NAMED_BY = {"epochs": "scale", "batch_size": "scale", "train_size": "scale", "optimizer": "optimizer",
            "lr": "optimizer", "warmup": "lr warm-up", "eps_warmup": "eps warm-up", "agc": "gradient clipping"}  # fmt: skip


@pytest.mark.parametrize("name", ["nofrost", "nofrost-agc", "bn-at"])
def test_every_departure_from_the_official_settings_is_named(name):
    official = DEFENSES.create("nofrost-official")
    recipe = DEFENSES.create(name)
    changed = {k for k, v in vars(recipe.settings).items() if vars(official.settings)[k] != v}
    assert changed <= set(NAMED_BY), f"{name}: unnamed departures {changed - set(NAMED_BY)}"
    text = " ".join(recipe.departures)
    for k in changed:
        assert NAMED_BY[k] in text, f"{name}: {k} differs from the official recipe but is not named"
    assert recipe.settings.attack_mode == "eval" and recipe.settings.schedule == "cosine"
    assert recipe.settings.label_smoothing == 0.1 and recipe.settings.drop_path == 0.1
    assert "network" in text  # not the paper's ResNet-50
    assert recipe.center_input == ("per-image input centering" in text)


def test_input_centering_is_per_image_and_named():
    """With ``center_input`` a uniform colour change of an image leaves the logits unchanged (and the batch
    does not matter: each image is centred on its own mean)."""
    from robustkit.builtin.shapes import shapes

    recipe = DEFENSES.create("nofrost")
    model = recipe.build(SPEC, recipe.settings).eval()
    x = shapes("train", n=32).x
    shifted = x + 0.1 * torch.tensor([1.0, -0.5, 0.3])[:, None, None]  # unclipped: the network is affine-fed
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(model(shifted), logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x[:3]), logits[:3], atol=1e-5, rtol=1e-5)
    plain = DEFENSES.create("nofrost-official")
    raw = plain.build(SPEC, plain.settings).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(shifted), raw(x), atol=1e-3)


class TwoModes(nn.Module):
    """Logits W_train x in train mode, W_eval x in eval mode; records the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w_train = nn.Parameter(torch.randn(3 * 8 * 8, 4, generator=g))
        self.w_eval = nn.Parameter(torch.randn(3 * 8 * 8, 4, generator=g))
        self.inner = nn.Dropout(0.5)  # a submodule whose mode must be restored too
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x.flatten(1) @ (self.w_train if self.training else self.w_eval)


def test_the_inner_attack_runs_in_the_settings_mode_and_restores_it():
    model = TwoModes().train()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 4, (6,))
    settings = TrainSettings(eps=8 / 255, steps=5, step_size=2 / 255, attack_mode="eval")
    x_eval = adversarial_batch(model, x, y, StepContext(settings, torch.Generator().manual_seed(1)))
    assert model.modes and not any(model.modes)  # every attack pass saw eval mode
    assert model.training and model.inner.training  # ... and the modes are restored
    assert all(p.requires_grad for p in model.parameters())
    # the examples are those of the eval-mode network, not the train-mode one
    frozen = TwoModes()
    frozen.w_train = frozen.w_eval  # a network that is its eval-mode self in either mode
    same = pgd_examples(frozen.train(), x, y, eps=8 / 255, steps=5, step_size=2 / 255,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(x_eval, same)
    model.modes.clear()
    x_train = adversarial_batch(
        model,
        x,
        y,
        StepContext(TrainSettings(steps=5, attack_mode="train"), torch.Generator().manual_seed(1)),
    )
    assert all(model.modes) and not torch.equal(x_train, x_eval)
    model.eval()
    adversarial_batch(model, x, y, StepContext(settings, torch.Generator().manual_seed(1)))
    assert not model.training and not model.inner.training


def test_hybrid_loss_is_half_clean_half_adversarial_with_label_smoothing():
    recipe = DEFENSES.create("nofrost")
    settings = recipe.settings.overridden(width=4)
    model = recipe.build(SPEC, settings).eval()  # eval: dropout and drop path off, the loss is deterministic
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    loss = hybrid_loss(model, x, y, StepContext(settings, torch.Generator().manual_seed(1)))
    x_adv = pgd_examples(model, x, y, eps=8 / 255, steps=10, step_size=1 / 255, generator=torch.Generator().manual_seed(1),
                         mode="eval")  # fmt: skip
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    ce = lambda logits: F.cross_entropy(logits, y, label_smoothing=0.1)  # noqa: E731
    torch.testing.assert_close(loss, 0.5 * ce(model(x)) + 0.5 * ce(model(x_adv)))
    assert ce(model(x_adv)) > ce(model(x))  # the attack raised the loss


@pytest.mark.parametrize(
    ("name", "arch"),
    [("nofrost", "torchvision:resnet18"), ("nofrost", "small-resnet"), ("bn-at", f"timm:{NF_SMALL}")],
)
def test_a_recipe_refuses_an_architecture_it_cannot_train(name, arch, tmp_path):
    with pytest.raises(ConfigError, match="normalizer-free|BatchNorm"):
        train_defense(name, "shapes", out_dir=tmp_path, arch=arch, epochs=1, train_size=16, batch_size=16,
                      progress=False, test_size=16)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("nofrost", None),
        ("nofrost", f"timm:{NF_SMALL}"),
        ("bn-at", "torchvision:resnet18"),
        ("nofrost-agc", None),
    ],
)
def test_each_recipe_trains_one_tiny_epoch(name, arch, tmp_path):
    info = train_defense(name, "shapes", out_dir=tmp_path, arch=arch, epochs=1, train_size=32, batch_size=16,
                         width=4, device="cpu", progress=False, test_size=32)  # fmt: skip
    assert info["epochs_done"] == 1 and info["cost"]["steps"] == 2
    assert info["settings"]["arch"] == arch and info["settings"]["attack_mode"] == "eval"
    assert info["settings"]["label_smoothing"] == 0.1
    assert info["prepared"]["departures"] == list(DEFENSES.create(name).departures)
    # PGD-10 (10 forward + 10 backward + 1 final check) + a forward and a backward pass over 2x the batch
    assert info["cost"]["passes_per_step"]["total"] == pytest.approx(25.0)
