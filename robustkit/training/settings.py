"""Training settings and what a loss function gets besides (model, x, y)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # the CLI reads the choices below without importing torch
    import torch

# the settings ``robustkit train`` may override
OVERRIDABLE = (
    "epochs",
    "batch_size",
    "train_size",
    "lr",
    "arch",
    "optimizer",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup",
    "label_smoothing",
    "drop_path",
    "augment",
    "amp",
    "attack_mode",
    "width",
)
SCHEDULES = ("linear", "cosine")
AUGMENTS = ("none", "flip", "flip-crop")
AMPS = ("none", "bf16", "fp16")
ATTACK_MODES = ("train", "eval")
_FLOATS = ("lr", "weight_decay", "warmup", "label_smoothing", "drop_path")
_TEXTS = ("arch", "optimizer", "schedule", "augment", "amp", "attack_mode")
_BOOLS = ("nesterov",)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Training hyper-parameters of a recipe (``robustkit train`` overrides those in ``OVERRIDABLE``).

    The defaults are the reduced scale robustkit trains at on a CPU (a few hundred steps on 2400 images):
    Adam, small batches and, for adversarial recipes, an eps ramp. Without the ramp, PGD training from
    scratch did not get off the ground at this budget (10% accuracy after 300 steps on shapes); the
    papers' full-scale runs use SGD for ~100-200 epochs instead.
    """

    epochs: int = 4
    batch_size: int = 32
    optimizer: str = "adam"  # "adam" or "sgd" (momentum, Nesterov)
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps with a linear learning-rate ramp, then linear decay to 0
    train_size: int | None = 2400  # None: the whole train split
    agc: float | None = None  # adaptive gradient clipping factor (timm.utils.agc), None: off
    eps: float = 8 / 255  # adversarial training budget (L-inf), when the recipe is adversarial
    steps: int = 10
    step_size: float = 2 / 255
    eps_warmup: float = 0.0  # fraction of steps over which the training eps ramps linearly from 0 to eps
    # fraction of steps trained on clean examples before the eps ramp begins (a curriculum for networks
    # that adversarial training from the first step leaves at chance, e.g. BN-only on random features)
    clean_phase: float = 0.0
    width: int = 8
    # The architecture (``backbones.build_backbone``): None is the recipe's own (robustkit's SmallResNet
    # family); else "small-resnet", "torchvision:resnet18", "timm:nf_resnet26", "video:r3d_18", or
    # "package.module:function" (called with num_classes=..., in_ch=...). It travels in the checkpoint.
    arch: str | None = None
    nesterov: bool = True  # SGD only
    schedule: str = "linear"  # "linear": warm-up then linear decay to 0; "cosine": warm-up then cosine to 0
    label_smoothing: float = 0.0
    drop_path: float = 0.0  # stochastic depth rate, for architectures that take one (timm)
    augment: str = "none"  # "none", "flip" (random horizontal flip), "flip-crop" (+ random crop, pad 4)
    amp: str = "none"  # mixed precision of the training step: "none", "bf16" or "fp16"
    attack_mode: str = "train"  # the mode the model is in while the inner attack runs: "train" or "eval"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not all(0 <= f <= 1 for f in (self.eps_warmup, self.warmup, self.clean_phase)):
            raise ConfigError(
                "warmup, eps_warmup and clean_phase are fractions of the training steps, in [0, 1]"
            )
        if self.clean_phase + self.eps_warmup > 1:
            raise ConfigError("clean_phase + eps_warmup must not exceed 1 (the whole training)")
        for value, allowed, what in (
            (self.schedule, SCHEDULES, "schedule"),
            (self.augment, AUGMENTS, "augment"),
            (self.amp, AMPS, "amp"),
            (self.attack_mode, ATTACK_MODES, "attack_mode"),
        ):
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.drop_path < 1:
            raise ConfigError("label_smoothing and drop_path must lie in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def overridden(self, **overrides: Any) -> TrainSettings:
        """A copy with the given ``OVERRIDABLE`` settings replaced (``None`` keeps the value), validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for k, v in given.items():
            if k not in OVERRIDABLE:
                raise ConfigError(f"train: unknown setting '{k}'; one of {', '.join(OVERRIDABLE)}")
            flag = f"--{k.replace('_', '-')}"
            if k in _FLOATS:
                if (
                    not isinstance(v, int | float)
                    or isinstance(v, bool)
                    or not (v > 0 if k == "lr" else v >= 0)
                ):
                    raise ConfigError(
                        f"{flag} must be a {'positive' if k == 'lr' else 'non-negative'} number, got {v!r}"
                    )
            elif k in _BOOLS:
                if not isinstance(v, bool):
                    raise ConfigError(f"{flag} must be True or False, got {v!r}")
            elif k in _TEXTS:
                if not isinstance(v, str) or not v.strip():
                    raise ConfigError(f"{flag} must be a non-empty string, got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {v!r}")
        return dataclasses.replace(self, **given)  # __post_init__ checks the allowed values


@dataclass
class StepContext:
    """What a loss function gets besides (model, x, y): the settings and a generator for the random
    starts of adversarial examples (seeded per epoch, so resumed training is identical)."""

    settings: TrainSettings
    generator: torch.Generator
    fraction: float = 1.0  # share of training steps done, counting the current one

    def budget(self) -> tuple[float, float]:
        """(eps, step size) of the inner attack now: zero during ``clean_phase``, then ramped during
        ``eps_warmup``, then full size."""
        s = self.settings
        into = self.fraction - s.clean_phase
        if into <= 0:
            return 0.0, 0.0
        scale = min(1.0, into / s.eps_warmup) if s.eps_warmup > 0 else 1.0
        return s.eps * scale, s.step_size * scale
