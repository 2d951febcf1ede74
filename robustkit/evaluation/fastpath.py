"""The fast path for attacks: BN folding, ``channels_last``, ``torch.compile`` and bf16 autocast,
with every verdict in fp32.

``FastPath(fold_bn=..., channels_last=..., compile=..., amp="bf16").wrap(model)`` returns a
``FastModel``: an ``nn.Module`` holding the original model (``.reference``) that attacks call like the
model itself. Its forward pass

- with ``fold_bn``, runs a copy of the model whose eval-mode BatchNorm layers are folded into the
  convolutions before them (``torch.fx.experimental.optimization.fuse``): the same function up to
  rounding, without the normalization passes and their backward (1.5x faster fp32 forward+backward
  of the shapes ResNet on CPU, 1.9x under bf16, where BN also costs casts). The copy is used only
  while every BatchNorm of the reference is in eval mode, and is refolded when the reference's
  parameters or buffers change; a model torch.fx cannot trace runs unfolded (logged once),
- converts the input to the ``channels_last`` (4-D) or ``channels_last_3d`` (5-D) memory format (the
  model's weights are converted once, in place, when wrapped),
- runs the model compiled with ``torch.compile`` (backend ``"inductor"``, or the backend named by
  ``compile``) — compaction changes batch sizes, so shapes are marked dynamic after the first
  recompile, as ``torch.compile`` does by default,
- under ``torch.autocast(dtype=torch.bfloat16)``, returning fp32 logits so losses are computed in fp32.

bf16 has 8 bits of mantissa: near 1.0 it cannot represent a step of 1/255, so a bf16 forward pass can
call an input adversarial that is not. Every verdict that counts is therefore taken with the fp32
reference model: ``reference(model)`` unwraps a ``FastModel`` (and is the identity otherwise), and
the runner's recheck (``robustkit.evaluation.execute.recheck``) runs it with autocast off.

The wrapper shares parameters and buffers with the reference model (no copy); attacks' state
preservation (``robustkit.models.state.preserved``) sees the reference model's parameters as the
wrapper's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks.base import fp32_model
from ..errors import ConfigError

log = logging.getLogger(__name__)

BF16_TOLERANCE = 0.03
reference = fp32_model  # the fp32 model behind a FastModel (the model itself otherwise)
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
        return {
            "channels_last": self.channels_last,
            "compile": self.compile,
            "amp": self.amp,
            "fold_bn": self.fold_bn,
        }

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` itself when no option is on, else a ``FastModel`` around it."""
        if not self.active:
            return model
        if not isinstance(model, nn.Module):
            raise ConfigError(
                "the fast path (--fold-bn / --channels-last / --compile / --amp) needs an nn.Module model"
            )
        return FastModel(model, self)


class FastModel(nn.Module):
    """Runs ``reference`` with the fast-path options; see the module docstring."""

    def __init__(self, model: nn.Module, options: FastPath) -> None:
        super().__init__()
        self.model = model
        self.options = options
        if options.channels_last:
            _to_channels_last(model)
        # not registered as submodules: they share (compiled) or derive from (folded) the reference
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
        """What the forward pass calls: the folded copy while it is valid, else the reference."""
        if self._fold and not any(m.training for m in self._norms) and self._refold_if_changed():
            folded, compiled = self._folded
            return compiled if compiled is not None else folded
        return self._compiled if self._compiled is not None else self.model

    def _refold_if_changed(self) -> bool:
        """Fold again if the reference's parameters or buffers changed since the last fold; False when
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
        import copy

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

    @property
    def success_tolerance(self) -> float:
        """bf16 logits of the same input differ from fp32 ones by up to about 2% of max |logit| (measured
        on the shapes model at and around 2/255 PGD examples); a success is trusted inside an attack only
        by a margin of 3% (``robustkit.attacks.base.is_success``). Otherwise samples near the boundary,
        adversarial in bf16 and not in fp32, stop early and the attack ends weaker than in fp32."""
        return BF16_TOLERANCE if self.options.amp_dtype is not None else 0.0

    @property
    def reference(self) -> nn.Module:
        """The wrapped fp32 model (the one every success is rechecked with)."""
        return self.model

    @property
    def full_precision(self) -> nn.Module:
        """This fast path without bf16 (folded BN and channels_last kept): for attacks whose decisions
        hinge on loss differences smaller than bf16 rounding (Square's random search)."""
        if self.options.amp_dtype is None:
            return self
        return _FullPrecision(self)

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
    """A ``FastModel`` run with autocast off (see ``FastModel.full_precision``)."""

    def __init__(self, fast: FastModel) -> None:
        super().__init__()
        self.fast = fast

    @property
    def reference(self) -> nn.Module:
        return self.fast.reference

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
    """Convert 4-D weights to channels_last and 5-D ones to channels_last_3d, in place."""
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.ndim in (4, 5):
                fmt = torch.channels_last if p.ndim == 4 else torch.channels_last_3d
                p.data = p.data.contiguous(memory_format=fmt)
