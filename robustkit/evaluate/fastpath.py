"""The fast path for attacks: ``channels_last``, ``torch.compile`` and bf16 autocast, rechecked in fp32.

``FastPath(channels_last=..., compile=..., amp="bf16").wrap(model)`` returns a ``FastModel``: an
``nn.Module`` holding the original model (``.reference``) that attacks call like the model itself.
Its forward pass

- converts the input to the ``channels_last`` (4-D) or ``channels_last_3d`` (5-D) memory format (the
  model's weights are converted once, in place, when wrapped),
- runs the model compiled with ``torch.compile`` (backend ``"inductor"``, or the backend named by
  ``compile``) — compaction changes batch sizes, so shapes are marked dynamic after the first
  recompile, as ``torch.compile`` does by default,
- under ``torch.autocast(dtype=torch.bfloat16)``, returning fp32 logits so losses are computed in fp32.

bf16 has 8 bits of mantissa: near 1.0 it cannot represent a step of 1/255, so a bf16 forward pass can
call an input adversarial that is not. Every verdict that counts is therefore taken with the fp32
reference model: ``reference(model)`` unwraps a ``FastModel`` (and is the identity otherwise), and
the runner's recheck (``robustkit.evaluate.execute.recheck``) runs it with autocast off.

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

from ..errors import ConfigError

log = logging.getLogger(__name__)

BF16_TOLERANCE = 0.03
AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class FastPath:
    """Fast-path options. ``compile``: False, True (inductor) or a ``torch.compile`` backend name."""

    channels_last: bool = False
    compile: bool | str = False
    amp: str | None = None

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
        return bool(self.channels_last or self.compile or self.amp_dtype is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"channels_last": self.channels_last, "compile": self.compile, "amp": self.amp}

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` itself when no option is on, else a ``FastModel`` around it."""
        if not self.active:
            return model
        if not isinstance(model, nn.Module):
            raise ConfigError("the fast path (--channels-last / --compile / --amp) needs an nn.Module model")
        return FastModel(model, self)


class FastModel(nn.Module):
    """Runs ``reference`` with the fast-path options; see the module docstring."""

    def __init__(self, model: nn.Module, options: FastPath) -> None:
        super().__init__()
        self.model = model
        self.options = options
        if options.channels_last:
            _to_channels_last(model)
        compiled = None
        if options.compile:
            backend = "inductor" if options.compile is True else str(options.compile)
            compiled = torch.compile(model, backend=backend)
        # not registered as a submodule: it shares the reference model's parameters
        object.__setattr__(self, "_compiled", compiled)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        if opts.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        fn = self._compiled if self._compiled is not None else self.model
        dtype = opts.amp_dtype
        if dtype is None:
            return fn(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = fn(x)
        return out.float()


def reference(model: Any) -> Any:
    """The fp32 model behind a ``FastModel`` (the model itself otherwise)."""
    return model.reference if isinstance(model, FastModel) else model


def make_fastpath(
    channels_last: bool = False, compile: bool | str = False, amp: str | None = None
) -> FastPath:
    """Validated options (``amp``: None, 'none' or 'bf16')."""
    if amp is not None and str(amp).lower() in ("none", "fp32"):
        amp = None
    return FastPath(channels_last=bool(channels_last), compile=compile, amp=amp)


def _to_channels_last(model: nn.Module) -> None:
    """Convert 4-D weights to channels_last and 5-D ones to channels_last_3d, in place."""
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.ndim in (4, 5):
                fmt = torch.channels_last if p.ndim == 4 else torch.channels_last_3d
                p.data = p.data.contiguous(memory_format=fmt)
