"""Broken defenses from the literature, as a test set for adaptive evaluation.

Each factory wraps a base classifier (an ``nn.Module`` mapping [0, 1] images to logits) into a defense
that looks robust to a naive evaluation and is not (Athalye, Carlini & Wagner 2018, *Obfuscated
Gradients Give a False Sense of Security*; Tramèr, Carlini, Brendel & Madry 2020, *On Adaptive Attacks
to Adversarial Example Defenses*). The step that breaks the evaluation is a named submodule, so a
researcher can declare it (``Capabilities(non_differentiable=("quantize",))``).

=====================  ==========================  ==============================================
kind                   test set (``TEST``)         held-out set (``HELD_OUT``)
=====================  ==========================  ==============================================
non-differentiable     ``bit-depth``: 4-bit        ``jpeg``: 8x8 block DCT, quantized
                       quantization (Guo 2018)     coefficients (Das 2017, Guo 2018)
randomized             ``random-resize-pad``       ``gaussian-noise``: input noise
                       (Xie et al. 2018)           (random self-ensemble, Liu et al. 2018)
saturating             ``clamped-log-probs``:      ``tanh-head``: tanh of temperature-scaled
                       clamped log-softmax         logit gaps
batch-dependent        ``train-mode-bn``:          ``batch-standardize``: inputs standardized
                       BatchNorm in train mode     with the batch's channel statistics
sound                  ``plain``                   ``plain``
adversarially trained  ``pgd-at`` (its own         ``pgd-at``
                       tiny network)
=====================  ==========================  ==============================================

``CASES[name]`` is a :class:`Case` ``(factory, capabilities, kind)``: ``factory(base)`` builds the
deployed defense, ``capabilities`` is what a researcher who knows the defense declares.
``truth(name, model, x, y, eps=...)`` is our own strongest adaptive attack on it (hand-designed per
kind, robustkit's attacks run directly on the deployed defense; every verdict is the deployed model's
own prediction), the figure an adaptive evaluation must reach.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import create_attack
from ..attacks.base import Counter
from ..attacks.bpda import BPDA
from ..attacks.pgd import gradient_ascent
from ..errors import ConfigError
from ..files import cache_root, file_lock
from ..functional.losses import margin
from ..models.checkpoint import load_into, save_weights
from ..models.normalized import Normalized
from ..models.state import preserved
from ..threat import make_threat
from ..training.seeding import fixed_seed
from ..training.settings import StepContext, TrainSettings
from .base import Capabilities

log = logging.getLogger(__name__)

NON_DIFFERENTIABLE, RANDOMIZED, SATURATING, BATCH_DEPENDENT = (
    "non-differentiable",
    "randomized",
    "saturating",
    "batch-dependent",
)
SOUND, ADVERSARIALLY_TRAINED = "sound", "adversarially-trained"
BROKEN_KINDS = (NON_DIFFERENTIABLE, RANDOMIZED, SATURATING, BATCH_DEPENDENT)


# ------------------------------------------------------------------------------------------ the steps


class BitDepth(nn.Module):
    """Bit-depth reduction (feature squeezing, Xu et al. 2018): ``round(x * (2^bits - 1)) / (2^bits - 1)``.
    Its gradient is zero almost everywhere."""

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.levels = 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


_LUMINANCE = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)  # fmt: skip


class JPEG(nn.Module):
    """JPEG-like compression (Das et al. 2017; Guo et al. 2018): each channel in 8x8 blocks, DCT, the
    coefficients divided by the standard luminance table (scaled for ``quality``), rounded, and back.
    Rounding makes the gradient zero almost everywhere. Height and width must be multiples of 8."""

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        self.register_buffer("table", ((_LUMINANCE * scale + 50) // 100).clamp(min=1) / 255)
        self.register_buffer("dct", _dct_matrix())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h % 8 or w % 8:
            raise ConfigError(f"JPEG: height and width must be multiples of 8, got {h}x{w}")
        blocks = x.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)
        coef = self.dct @ (blocks - 0.5) @ self.dct.T
        coef = torch.round(coef / self.table) * self.table
        out = self.dct.T @ coef @ self.dct + 0.5
        return out.transpose(3, 4).reshape(b, c, h, w).clamp(0, 1)


class RandomResizePad(nn.Module):
    """Random resizing and padding (Xie et al. 2018), at the input size: each image of each call is
    shrunk to a random side in ``[min_size, H]`` and padded (edge pixels repeated) at a random offset back to ``H x W``."""

    def __init__(self, min_size: int = 28) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        rows = []
        for img in x.split(1):
            side = int(torch.randint(self.min_size, min(h, w) + 1, ()))
            small = F.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)
            top, left = (int(torch.randint(0, n - side + 1, ())) for n in (h, w))
            rows.append(F.pad(small, (left, w - side - left, top, h - side - top), mode="replicate"))
        return torch.cat(rows)


class GaussianNoise(nn.Module):
    """Gaussian noise on the input at every call (random self-ensemble, Liu et al. 2018)."""

    def __init__(self, sigma: float = 0.04) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)


class ClampedLogProbs(nn.Module):
    """A head returning temperature-scaled log-probabilities clamped to ``[floor, ceiling]``:
    ``log_softmax(temperature * z).clamp(floor, ceiling)``. A confident prediction gives a constant
    output (``ceiling`` for the top class, ``floor`` for the rest): the loss is flat and the gradient
    zero. The argmax is that of ``z`` (at most one class has a log-probability above ``log 0.5``)."""

    def __init__(
        self, temperature: float = 10.0, floor: float = -5.0, ceiling: float = math.log(0.9)
    ) -> None:
        super().__init__()
        self.temperature, self.floor, self.ceiling = temperature, floor, ceiling

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.temperature * z, dim=1).clamp(self.floor, self.ceiling)


class TanhHead(nn.Module):
    """A saturating head: ``tanh(temperature * (z - max z))``. The top class outputs 0, every other class
    saturates at -1 once its logit trails by more than a few ``1 / temperature``: flat loss, zero
    gradient. The argmax is that of ``z``."""

    def __init__(self, temperature: float = 5.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.temperature * (z - z.max(dim=1, keepdim=True).values))


class BatchStandardize(nn.Module):
    """Inputs standardized with the statistics of the current batch (per channel over the batch and
    the pixels), mapped to fixed ``mean`` / ``std``: each image's output depends on its batch mates."""

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(0, 2, 3), keepdim=True)
        sd = x.std(dim=(0, 2, 3), keepdim=True) + 1e-3
        return ((x - mu) / sd * self.std + self.mean).clamp(0, 1)


# ------------------------------------------------------------------------------------------ the defenses


def _pipeline(**steps: nn.Module) -> nn.Sequential:
    """The defense as named steps, e.g. ``quantize`` then ``classifier`` (names a researcher declares)."""
    return nn.Sequential(OrderedDict(steps))


def bit_depth(base: nn.Module, bits: int = 4) -> nn.Module:
    return _pipeline(quantize=BitDepth(bits), classifier=base)


def jpeg(base: nn.Module, quality: int = 75) -> nn.Module:
    return _pipeline(jpeg=JPEG(quality), classifier=base)


def random_resize_pad(base: nn.Module, min_size: int = 28) -> nn.Module:
    return _pipeline(resize_pad=RandomResizePad(min_size), classifier=base)


def gaussian_noise(base: nn.Module, sigma: float = 0.04) -> nn.Module:
    return _pipeline(noise=GaussianNoise(sigma), classifier=base)


def clamped_log_probs(base: nn.Module, temperature: float = 10.0, floor: float = -5.0) -> nn.Module:
    return _pipeline(classifier=base, head=ClampedLogProbs(temperature, floor))


def tanh_head(base: nn.Module, temperature: float = 5.0) -> nn.Module:
    return _pipeline(classifier=base, head=TanhHead(temperature))


def train_mode_bn(base: nn.Module) -> nn.Module:
    """The base with every BatchNorm in train mode (test-time batch statistics), written the common way:
    a copy put in ``train()``; its running statistics never change its output."""
    model = copy.deepcopy(base)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return _pipeline(classifier=model)


def batch_standardize(base: nn.Module) -> nn.Module:
    return _pipeline(standardize=BatchStandardize(), classifier=base)


def plain(base: nn.Module) -> nn.Module:
    """The sound control: the base classifier itself (eval mode)."""
    return base


class Case(NamedTuple):
    """``factory(base)`` builds the defense; ``capabilities``: what a researcher would declare; ``kind``."""

    factory: Callable[[nn.Module], nn.Module]
    capabilities: Capabilities
    kind: str


def _nd(*names: str) -> Capabilities:
    return Capabilities(non_differentiable=names)


def _pgd_at_control(base: nn.Module) -> nn.Module:
    """The adversarially trained control brings its own network (``adversarially_trained()``)."""
    return adversarially_trained(device=next(base.parameters()).device)


TEST: dict[str, Case] = {
    "bit-depth": Case(bit_depth, _nd("quantize"), NON_DIFFERENTIABLE),
    "random-resize-pad": Case(random_resize_pad, Capabilities(stochastic=True), RANDOMIZED),
    "clamped-log-probs": Case(clamped_log_probs, _nd("head"), SATURATING),
    "train-mode-bn": Case(train_mode_bn, Capabilities(batch_dependent=True), BATCH_DEPENDENT),
    "plain": Case(plain, Capabilities(), SOUND),
    "pgd-at": Case(_pgd_at_control, Capabilities(), ADVERSARIALLY_TRAINED),
}
HELD_OUT: dict[str, Case] = {
    "jpeg": Case(jpeg, _nd("jpeg"), NON_DIFFERENTIABLE),
    "gaussian-noise": Case(gaussian_noise, Capabilities(stochastic=True), RANDOMIZED),
    "tanh-head": Case(tanh_head, _nd("head"), SATURATING),
    "batch-standardize": Case(batch_standardize, Capabilities(batch_dependent=True), BATCH_DEPENDENT),
    "plain": TEST["plain"],
    "pgd-at": TEST["pgd-at"],
}
CASES: dict[str, Case] = {**TEST, **HELD_OUT}


# ------------------------------------------------------------------------------- the trained control

AT_SETTINGS = TrainSettings(
    epochs=5, batch_size=64, optimizer="adam", lr=5e-3, train_size=2000, eps=4 / 255, steps=2,
    step_size=2.5 / 255, eps_warmup=0.2,
)  # fmt: skip


def _small_cnn(num_classes: int = 10) -> nn.Module:
    """A small conv net (BatchNorm, used in eval mode: batch-independent)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    with fixed_seed(0):
        net = nn.Sequential(
            *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
        )  # fmt: skip
    return Normalized(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _madry(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    from .baselines import madry_loss

    return madry_loss(model, x, y, ctx)


def adversarially_trained(device: torch.device | str = "cpu", progress: bool = False) -> nn.Module:
    """The adversarially trained control: a small CNN, PGD-AT (Madry et al. 2018; L-inf 4/255, 2 steps)
    on 2000 ``shapes`` training images for 5 epochs (about 30 s on two CPU cores), cached under
    robustkit's cache directory (trained once, under a file lock). Returned in eval mode."""
    from ..builtin.shapes import shapes
    from ..training.loop import fit

    key = hashlib.sha256(repr((AT_SETTINGS, torch.__version__.split("+")[0], 1)).encode()).hexdigest()[:12]
    path = cache_root() / "broken" / f"shapes-pgd-at-{key}.safetensors"
    model = _small_cnn()
    with file_lock(path.with_suffix(".lock"), "training the PGD-AT control"):
        if path.exists():
            return load_into(model, path).to(device).eval()
        log.info("training the PGD-AT control (cached in %s)", path.parent)
        fit(model, shapes("train", n=AT_SETTINGS.train_size), AT_SETTINGS, device=torch.device("cpu"), loss=_madry, seed=0,
            desc="PGD-AT control", progress=progress)  # fmt: skip
        save_weights(model, path, metadata={"recipe": "broken.pgd-at"})
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ the truth


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How hard the truth attack works. ``steps``/``restarts``/``targets``: APGD (APGD-T); ``queries``: Square on the
    deployed model; ``eot``: gradient passes per step on a random defense; ``draws``: fresh draws that
    judge it; ``joint_steps``: whole-batch PGD steps per step size on a batch-dependent defense."""

    steps: int = 100
    restarts: int = 2
    targets: int = 9
    queries: int = 1000
    eot: int = 40
    draws: int = 20
    joint_steps: int = 100
    step_sizes: tuple[float, ...] = (0.25, 0.1)


@dataclass
class Truth:
    """The strongest robust accuracy found (``robust_accuracy``), per attack or view (``parts``)."""

    case: str
    robust_accuracy: float
    clean_accuracy: float
    robust: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "robust_accuracy": self.robust_accuracy,
            "clean_accuracy": self.clean_accuracy,
            "parts": self.parts,
            **self.details,
        }


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def _bpda(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` whose named steps run forward as they are and backward as the identity; a step
    that produces the output (a head) is removed: the attack sees the logits before it."""
    out = copy.deepcopy(model)
    for name in names:
        last = isinstance(out, nn.Sequential) and name == list(out._modules)[-1]
        setattr(out, name, nn.Identity() if last else BPDA(getattr(out, name)))
    return out


def _white_box(
    deployed: nn.Module,
    attack_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    b: Budget,
    seed: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """APGD-CE (restarts), APGD-T and Square (on the deployed model), each judged on the deployed model;
    a sample is robust when no attack broke it."""
    robust = _correct(deployed, x, y)
    parts = {}
    attacks = [
        ("apgd-ce", attack_model, create_attack("apgd-ce", eps=eps, steps=b.steps, restarts=b.restarts)),
        ("apgd-t", attack_model, create_attack("apgd-t", eps=eps, steps=b.steps, n_targets=b.targets)),
        ("apgd-dlr", attack_model, create_attack("apgd-dlr", eps=eps, steps=b.steps, restarts=b.restarts)),
        ("square", deployed, create_attack("square", eps=eps, queries=b.queries)),
    ]
    for i, (name, net, attack) in enumerate(attacks):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            parts[name] = 0.0
            continue
        g = torch.Generator(x.device).manual_seed(seed + i)
        with preserved(net), preserved(deployed):
            x_adv = attack(net, x[idx], y[idx], generator=g).x_adv
            robust[idx] = _correct(deployed, x_adv, y[idx])
        parts[name] = float(robust.float().mean())
    return robust, parts


def _draws(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per sample the fraction of ``draws`` fresh draws of a random model that classify it correctly."""
    return torch.stack([_correct(model, x, y).float() for _ in range(draws)]).mean(0)


def _randomized(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, b: Budget, seed: int
) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
    """APGD-CE and APGD-DLR with EOT over ``b.eot`` passes per step; per sample the attack whose example
    fewer selection draws classify correctly; judged on ``b.draws`` other fresh draws."""
    clean = _draws(model, x, y, b.draws)
    best_x, best_sel = x.clone(), _draws(model, x, y, b.draws)
    parts = {}
    for i, loss in enumerate(("ce", "dlr")):
        attack = create_attack(f"apgd-{loss}", eps=eps, steps=b.steps, eot_samples=b.eot)
        g = torch.Generator(x.device).manual_seed(seed + i)
        with preserved(model):
            x_adv = attack(model, x, y, generator=g).x_adv
        sel = _draws(model, x_adv, y, b.draws)
        take = sel < best_sel
        best_x[take], best_sel = x_adv[take], torch.minimum(best_sel, sel)
        parts[f"apgd-{loss} (eot {b.eot})"] = float(_draws(model, x_adv, y, b.draws).mean())
    final = _draws(model, best_x, y, b.draws)
    details = {
        "clean_accuracy_mean_over_draws": float(clean.mean()),
        "robust_under_every_draw": float((final == 1).float().mean()),
        "draws": b.draws,
    }
    return final, parts, details


def _joint(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, b: Budget, seed: int
) -> torch.Tensor:
    """The whole batch under the attacker's control: PGD on the sum of the clamped margins of every
    sample, the batch always evaluated whole; the best batch (fewest correct) over step sizes and
    restarts. Returns the per-sample verdicts of that one batch, and the batch."""
    threat = make_threat("Linf", eps)
    never = torch.full_like(y, -1)
    best, best_x = _correct(model, x, y), x
    g = torch.Generator(x.device).manual_seed(seed)
    for size in b.step_sizes:
        for r in range(b.restarts):
            start = x.clone() if r == 0 else x + threat.init(x, g)
            with preserved(model):
                x_adv, _ = gradient_ascent(
                    model, x, y, threat, steps=b.joint_steps, step_size=size * eps,
                    objective=lambda z: (-margin(z, y)).clamp(max=2.0), target=never, start=start,
                    counter=Counter(),
                )  # fmt: skip
            ok = _correct(model, x_adv, y)
            if ok.sum() < best.sum():
                best, best_x = ok, x_adv
    return best, best_x


def _one_at_a_time(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, b: Budget, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample alone in its batch: APGD-CE and APGD-T with batch size one. Returns the verdicts and
    the examples (the worst found per sample)."""
    robust = torch.zeros_like(y, dtype=torch.bool)
    out = x.clone()
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        r, adv = _white_box_one(model, xi, yi, eps, b, seed + i)
        robust[i], out[i] = r, adv[0]
    return robust, out


def _white_box_one(model, xi, yi, eps, b: Budget, seed: int) -> tuple[bool, torch.Tensor]:
    if not bool(_correct(model, xi, yi)):
        return False, xi
    for j, attack in enumerate(
        (
            create_attack("apgd-ce", eps=eps, steps=b.steps),
            create_attack("apgd-t", eps=eps, steps=b.steps, n_targets=b.targets),
        )
    ):
        with preserved(model):
            adv = attack(model, xi, yi, generator=torch.Generator(xi.device).manual_seed(seed + j)).x_adv
        if not bool(_correct(model, adv, yi)):
            return False, adv
    return True, xi


def _among_clean(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: list[torch.Tensor]
) -> torch.Tensor:
    """Each sample's candidate examples judged among its clean batch mates: robust when none fools it."""
    robust = _correct(model, x, y)
    for cand in candidates:
        for i in robust.nonzero().flatten().tolist():
            batch = x.clone()
            batch[i] = cand[i]
            robust[i] = bool(_correct(model, batch, y)[i])
    return robust


def _batch_dependent(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, b: Budget, seed: int
) -> tuple[torch.Tensor, dict[str, float]]:
    joint, joint_adv = _joint(model, x, y, eps, b, seed)
    single, single_adv = _one_at_a_time(model, x, y, eps, b, seed)
    among = _among_clean(model, x, y, [joint_adv, single_adv])
    parts = {
        "whole-batch": float(joint.float().mean()),
        "one-at-a-time": float(single.float().mean()),
        "among-clean": float(among.float().mean()),
    }
    worst = min(parts, key=parts.__getitem__)
    return {"whole-batch": joint, "one-at-a-time": single, "among-clean": among}[worst], parts


def truth(
    case: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    budget: Budget | None = None,
    seed: int = 0,
) -> Truth:
    """Our own strongest adaptive attack on the deployed defense ``model`` built by ``CASES[case]``, at
    L-inf ``eps``; every verdict is the deployed model's own prediction.

    - non-differentiable steps: BPDA (identity backward) through the preprocessing; a saturating head is
      skipped (the attack follows the logits before it); APGD-CE with restarts, APGD-T, APGD-DLR, then
      Square on the deployed model; robust when no attack broke the sample;
    - randomized: APGD-CE and APGD-DLR with EOT, judged as the mean over fresh draws;
    - batch-dependent: the whole batch under the attacker's control (joint PGD, the batch never split),
      one sample at a time (APGD-CE, APGD-T in batches of one), and the adversarial sample among clean
      mates (the examples of the other two views, each judged in its clean batch); the worst view;
    - sound and adversarially trained controls: the white-box attacks as for a plain model.
    """
    if case not in CASES:
        raise ConfigError(f"unknown broken-defense case '{case}'; one of {', '.join(CASES)}")
    spec, b = CASES[case], budget or Budget()
    details: dict[str, Any] = {"kind": spec.kind, "eps": eps, "n": int(x.shape[0]), "budget": b.__dict__}
    if spec.kind == RANDOMIZED:
        clean = float(_draws(model, x, y, b.draws).mean())
        robust, parts, more = _randomized(model, x, y, eps, b, seed)
        details |= more
    elif spec.kind == BATCH_DEPENDENT:
        clean = float(_correct(model, x, y).float().mean())
        robust, parts = _batch_dependent(model, x, y, eps, b, seed)
    else:
        clean = float(_correct(model, x, y).float().mean())
        names = spec.capabilities.non_differentiable
        robust, parts = _white_box(model, _bpda(model, names) if names else model, x, y, eps, b, seed)
    return Truth(case, float(robust.float().mean()), clean, robust, parts, details)
