"""DOA, defense against occlusion attacks (Wu, Tong & Vorobeychik, ICLR 2020): adversarial training
against the rectangular occlusion attack (ROA), the standard defense to compare with under ROA and
other physically realizable attacks (eyeglass frames, stickers).

Each training step replaces the batch by its ROA examples and minimizes the cross-entropy on them
(Madry's recipe with ROA as the inner maximization): robustkit's own ``roa`` attack
(``robustkit.attacks.roa``) finds, per image, the rectangle position (``search``: the gradient-guided
search of the top ``top_c`` positions on a ``stride`` grid, or the exhaustive one) and then takes
``settings.steps`` unbounded sign-gradient steps of ``settings.step_size`` inside it. The model is in
``settings.attack_mode`` while the attack runs and is left as the attack found it (modes, gradients,
BatchNorm statistics). The rectangle's size is the backend's ``height`` x ``width`` (fractions of the
image side): the paper's 100 x 50 on 224-pixel faces is about 0.45 x 0.22.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks.roa import ROA
from ..training.settings import StepContext, TrainSettings
from .adversarial import training_ce
from .base import register_defense
from .baselines import AdversarialRecipe

DOA_PAPER = (
    "Wu, Tong & Vorobeychik 2020, Defending Against Physically Realizable Attacks on Image Classification"
)


@dataclass(frozen=True, kw_only=True)
class DOA(AdversarialRecipe):
    """Adversarial training against ROA; its fields configure the inner attack's rectangle and search."""

    height: float = 0.25
    width: float = 0.25
    search: str = "gradient"
    stride: int = 2
    top_c: int = 10

    def inner_attack(self, settings: TrainSettings) -> ROA:
        """The ROA that makes the training examples (no held-out evaluation, the last iterate)."""
        return ROA(
            height=self.height, width=self.width, search=self.search, stride=self.stride, top_c=self.top_c,
            steps=settings.steps, step_size=settings.step_size, early_stop=False, eval_draws=0,
            eval_grid=False,
        )  # fmt: skip

    def examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """ROA examples of the batch, the model in ``settings.attack_mode`` during the attack."""
        attack = self.inner_attack(ctx.settings)
        training = model.training
        try:
            model.train(ctx.settings.attack_mode == "train")
            return attack(model, x, y, generator=ctx.generator).x_adv.detach()
        finally:
            model.train(training)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Cross-entropy (with the settings' label smoothing) on the ROA examples only."""
        return training_ce(model(self.examples(model, x, y, ctx)), y, ctx)


register_defense(
    DOA(
        name="doa",
        description="DOA: adversarial training against the rectangular occlusion attack (ROA, 25% x 25% of "
        "the image, gradient-guided search, 10 sign steps of 0.05 inside the rectangle).",
        settings=TrainSettings(epochs=6, steps=10, step_size=0.05),
        paper=DOA_PAPER,
        departures=(
            "scale: 6 epochs of 2400 built-in 32x32 images from scratch, Adam (lr 5e-3, linear warm-up and "
            "decay), instead of fine-tuning a VGGFace / GTSRB network",
            "rectangle: 25% x 25% of the image side on 32x32 images (the paper: 100 x 50 pixels of 224x224 "
            "faces); gradient-guided search of 10 candidates on a stride-2 grid",
            "inner attack: 10 sign-gradient steps of 0.05 inside the rectangle (the paper trains with more)",
            "network: robustkit's BN SmallResNet (width 8) unless --arch",
        ),
    )
)
