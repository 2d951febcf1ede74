"""The fast path for attacks: BN folding, ``channels_last``, ``torch.compile`` and bf16 autocast,
with every verdict in fp32. It never changes the user's model.

``FastPath(fold_bn=..., channels_last=..., compile=..., amp="bf16").precisions(model)`` returns the
model at the precisions attacks may declare (``Precisions``): ``fast``, a ``FastModel`` that attacks
call like the model itself; ``fp32``, the same without autocast; ``reference``, the user's model, which
gives every verdict that counts; and ``tolerance``, the margin a success needs in ``fast``'s logits.
The runner hands an attack ``precisions.at(attack.precision)`` and a criterion with that margin
(``robustkit.attacks.criteria``); attacks never ask a model what it is. A ``FastModel``'s forward pass

- with ``fold_bn``, runs a copy of the model whose eval-mode BatchNorm layers are folded into the
  convolutions before them (``torch.fx.experimental.optimization.fuse``): the same function up to
  rounding, without the normalization passes and their backward (1.5x faster fp32 forward+backward
  of the shapes ResNet on CPU, 1.9x under bf16, where BN also costs casts). The copy is used only
  while every BatchNorm of the model is in eval mode, and is refolded when the model's parameters or
  buffers change; a model torch.fx cannot trace runs unfolded (logged once),
- converts the input to the ``channels_last`` (4-D) or ``channels_last_3d`` (5-D) memory format and
  runs a private copy of the model whose weights are converted once, when wrapped (the user's weights
  keep their memory format; the copy does not follow later changes of the user's model),
- runs the model compiled with ``torch.compile`` (backend ``"inductor"``, or the backend named by
  ``compile``) — compaction changes batch sizes, so shapes are marked dynamic after the first
  recompile, as ``torch.compile`` does by default,
- under ``torch.autocast(dtype=torch.bfloat16)``, returning fp32 logits so losses are computed in fp32.

bf16 has 8 bits of mantissa: near 1.0 it cannot represent a step of 1/255, so a bf16 forward pass can
call an input adversarial that is not. Every verdict that counts is therefore taken with the fp32
``reference`` model with autocast off (``robustkit.attacks.criteria.confirm``).

Without ``channels_last`` the ``FastModel`` shares parameters and buffers with the user's model (no
copy); attacks' state preservation (``robustkit.models.state.preserved``) sees them as its own.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

# bf16 logits of the same input differ from fp32 ones by up to about 2% of max |logit| (measured on the
# shapes model at and around 2/255 PGD examples); a success is trusted inside an attack only by a margin
# of 3% (``robustkit.attacks.criteria``). Otherwise samples near the boundary, adversarial in bf16 and
# not in fp32, stop early and the attack ends weaker than in fp32.
BF16_TOLERANCE = 0.03
PRECISIONS = ("any", "fp32")
AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class FastPath:
    """Fast-path options. ``compile``: False, True (inductor) or a ``torch.compile`` backend name."""

    channels_last: bool = False
    compile: bool | str = False
    amp: str | None = None
    fold_bn: bool = False

    def __post_init__(self) -> None:
        if self.amp is not None and str(self.amp).lower() not in ("none", "fp32", *AMP_DTYPES):
            raise ConfigError(f"--amp must be 'bf16' or 'none', got {self.amp!r}")
        if not isinstance(self.compile, bool | str) or self.compile == "":
            raise ConfigError(
                f"compile must be true, false or a torch.compile backend name, got {self.compile!r}"
            )

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return None if self.amp is None else AMP_DTYPES.get(str(self.amp).lower())

    @property
    def active(self) -> bool:
        return bool(self.channels_last or self.compile or self.amp_dtype is not None or self.fold_bn)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` itself when no option is on, else a ``FastModel`` around it."""
        if not self.active:
            return model
        if not isinstance(model, nn.Module):
            raise ConfigError(
                "the fast path (--fold-bn / --channels-last / --compile / --amp) needs an nn.Module model"
            )
        return FastModel(model, self)

    @property
    def tolerance(self) -> float:
        """The margin (fraction of max |logit|) a success needs in the fast model's logits."""
        return BF16_TOLERANCE if self.amp_dtype is not None else 0.0

    def precisions(self, model: Callable, *, batch_dependent: bool = False) -> Precisions:
        """``model`` at the precisions an attack may declare; see ``Precisions`` (``batch_dependent``:
        attacks keep the batch they are given whole, see there)."""
        fast = self.wrap(model)  # type: ignore[arg-type]
        if fast is model:
            return Precisions.single(model, batch_dependent=batch_dependent)
        fp32 = _FullPrecision(fast) if self.amp_dtype is not None else fast
        return Precisions(
            fast=fast, fp32=fp32, reference=model, tolerance=self.tolerance, batch_dependent=batch_dependent
        )


@dataclass(frozen=True)
class Precisions:
    """One model at the precisions an attack may declare (``Attack.precision``).

    ``fast``: the fast path as configured (bf16 under ``amp``), what attacks run by default;
    ``fp32``: the fast path with autocast off (BN folding, channels_last and compile kept), for attacks
    whose decisions hinge on differences below bf16 rounding; ``reference``: the user's model, the fp32
    model of every final verdict; ``tolerance``: the margin a success needs in ``fast``'s logits.

    ``batch_dependent``: a sample's output depends on its batch mates (test-time BatchNorm, a defense
    that reads batch statistics). Attacks then call the model only on the whole batch they were given,
    rows in order: no compaction, no subsets, no restarts stacked in one batch; a finished row stays in
    the batch, held at its adversarial point (``robustkit.attacks.base.Judge.whole_batch``).

    ``surrogate``: ``fast`` and ``fp32`` compute another function than ``reference`` (a defense's attack
    model, whose saturating head is skipped: ``robustkit.defenses.adaptive``). Attacks take their loss,
    step-size control and best-point selection from ``fast``, and decide every success with a forward
    pass of ``reference`` (``robustkit.attacks.base.Judge.decide``).
    """

    fast: Callable
    fp32: Callable
    reference: Callable
    tolerance: float = 0.0
    batch_dependent: bool = False
    surrogate: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_dependent, bool):
            raise ConfigError(f"batch_dependent must be True or False, got {self.batch_dependent!r}")

    @classmethod
    def single(cls, model: Callable, *, batch_dependent: bool = False) -> Precisions:
        """A model without a fast path: itself at every precision."""
        return cls(fast=model, fp32=model, reference=model, batch_dependent=batch_dependent)

    @classmethod
    def adapted(cls, attack_model: Callable, model: Callable, *, batch_dependent: bool = False) -> Precisions:
        """A defense as ``adapt`` returns it: attacks differentiate ``attack_model``, success is judged
        on the deployed ``model`` (``surrogate`` when they differ)."""
        return cls(fast=attack_model, fp32=attack_model, reference=model, surrogate=attack_model is not model,
                   batch_dependent=batch_dependent)  # fmt: skip

    def at(self, precision: str) -> Callable:
        """The model for an attack that declares ``precision`` ("any" or "fp32")."""
        if precision not in PRECISIONS:
            raise ConfigError(
                f"an attack's precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        return self.fp32 if precision == "fp32" else self.fast


class FastModel(nn.Module):
    """Runs ``model`` with the fast-path options (a copy of it with ``channels_last``); see the module
    docstring."""

    def __init__(self, model: nn.Module, options: FastPath) -> None:
        super().__init__()
        if options.channels_last:  # the user's weights keep their memory format: convert a copy
            try:
                model = copy.deepcopy(model)
            except Exception as exc:  # noqa: BLE001 - whatever stops the copy
                raise ConfigError(
                    f"--channels-last converts a copy of the model, and {type(model).__name__} cannot be "
                    f"copied ({exc}); run without --channels-last"
                ) from exc
            _to_channels_last(model)
        self.model = model
        self.options = options
        # not registered as submodules: they share (compiled) or derive from (folded) the model
        object.__setattr__(self, "_compiled", self._compile(model))
        object.__setattr__(self, "_folded", None)  # (folded copy, its compiled form)
        object.__setattr__(self, "_folded_from", None)  # (versions, buffer copies) at the last fold
        # the module list once: ``parameters()`` / ``buffers()`` walk the tree on every call, five times
        # the cost of reading the modules' own tensors, and the fold check runs on every forward pass
        modules = list(model.modules())
        object.__setattr__(self, "_all_modules", modules)
        norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        object.__setattr__(self, "_norms", norms)
        object.__setattr__(self, "_fold", bool(options.fold_bn and norms))

    def _compile(self, module: nn.Module) -> Any:
        if not self.options.compile:
            return None
        backend = "inductor" if self.options.compile is True else str(self.options.compile)
        return torch.compile(module, backend=backend)

    def _runner(self) -> Any:
        """What the forward pass calls: the folded copy while it is valid, else the model."""
        if self._fold and not any(m.training for m in self._norms) and self._refold_if_changed():
            folded, compiled = self._folded
            return compiled if compiled is not None else folded
        return self._compiled if self._compiled is not None else self.model

    def _refold_if_changed(self) -> bool:
        """Fold again if the model's parameters or buffers changed since the last fold; False when
        the model cannot be folded. Cheap when nothing changed: the storage and the version counter
        of each tensor (a tensor replaced, or written in place)."""
        params = [t for m in self._all_modules for t in m._parameters.values() if t is not None]
        buffers = [t for m in self._all_modules for t in m._buffers.values() if t is not None]
        versions = [(t.data_ptr(), t._version) for t in (*params, *buffers)]
        if self._folded_from is not None and versions != self._folded_from[0]:
            # buffers are written in place with the same values by every attack (``preserved``);
            # a parameter written in place (an optimizer step) always means a refold
            old, saved = self._folded_from
            n_params = len(params)
            if versions[:n_params] == old[:n_params] and all(
                torch.equal(t, c) for t, c in zip(buffers, saved, strict=True)
            ):
                self._folded_from = (versions, saved)
        if self._folded_from is not None and versions == self._folded_from[0]:
            return True
        from torch.fx.experimental.optimization import fuse

        try:
            folded = fuse(copy.deepcopy(self.model))
        except Exception as exc:  # noqa: BLE001 - whatever stops tracing: run unfolded
            log.warning("--fold-bn: %s cannot be traced by torch.fx (%s); it runs unfolded",
                        type(self.model).__name__, exc)  # fmt: skip
            self._fold = False
            return False
        folded.eval()
        for p in folded.parameters():
            p.requires_grad_(False)
        if self.options.channels_last:
            _to_channels_last(folded)
        self._folded = (folded, self._compile(folded))
        self._folded_from = (versions, [t.detach().clone() for t in buffers])
        return True

    def forward(self, x: torch.Tensor, amp: bool = True) -> torch.Tensor:
        opts = self.options
        if opts.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        fn = self._runner()
        dtype = opts.amp_dtype if amp else None
        if dtype is None:
            return fn(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = fn(x)
        return out.float()


class _FullPrecision(nn.Module):
    """A ``FastModel`` run with autocast off (``Precisions.fp32``): the same folded copy, memory format
    and compiled function, fp32 arithmetic. A module around the fast model, so that ``preserved`` sees
    its state."""

    def __init__(self, fast: FastModel) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast(x, amp=False)


def make_fastpath(
    channels_last: bool = False, compile: bool | str = False, amp: str | None = None, fold_bn: bool = False
) -> FastPath:
    """Validated options (``amp``: None, 'none' or 'bf16')."""
    if amp is not None and str(amp).lower() in ("none", "fp32"):
        amp = None
    return FastPath(channels_last=bool(channels_last), compile=compile, amp=amp, fold_bn=bool(fold_bn))


def _to_channels_last(model: nn.Module) -> None:
    """Convert 4-D weights to channels_last and 5-D ones to channels_last_3d, in place (of the fast
    path's own copy)."""
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.ndim in (4, 5):
                fmt = torch.channels_last if p.ndim == 4 else torch.channels_last_3d
                p.data = p.data.contiguous(memory_format=fmt)
