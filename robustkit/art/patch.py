"""Patch-style robustkit attacks as ART attacks, following ``AdversarialPatchPyTorch``.

``generate(x, y=None)`` trains the universal patch on ``x`` and returns ``(patch, mask)`` in the
estimator's range and layout (``(C, S, S)``, or ``(S, S, C)`` for channels-last estimators);
``apply_patch(x, scale, patch_external=None, mask=None)`` pastes it at random rotations and
locations with side ``scale`` times the image's shorter edge, as ART does. ``mask`` there is ART's
location mask: a bool array ``(1, H, W)`` or ``(N, H, W)`` of allowed patch centres. For a targeted
patch, ``y`` names the one target class (indices or one-hot, all the same class); without ``y`` the
attack's ``target_class`` is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..functional.placement import sample_placement, shape_mask
from ..functional.random import sample_generators, uniform
from .boundary import labels_from
from .evasion import RobustkitEvasionAttack, eval_mode


class RobustkitPatchAttack(RobustkitEvasionAttack):
    """Base of the generated classes for attacks that train a universal patch (``fit`` + ``patch``)."""

    def __init__(self, estimator: Any, **params: Any) -> None:
        super().__init__(estimator, **params)
        self._fitted: Any = None

    @property
    def patch(self) -> np.ndarray | None:
        """The trained patch in the estimator's range and layout (None before ``generate``)."""
        return None if self._fitted is None else self._to_estimator(self._fitted.patch)

    def reset_patch(self) -> None:
        self._fitted = None

    def _channels_last(self) -> bool:
        return self._layout in ("NHWC", "NTHWC")

    def _to_estimator(self, texture: torch.Tensor) -> np.ndarray:
        lo = float(self._range.lo.flat[0])
        arr = (lo + texture.detach().cpu().float() * self._range.width("a patch")).numpy().astype(np.float32)
        return np.moveaxis(arr, 0, -1) if self._channels_last() else arr

    def _from_estimator(self, patch: Any) -> torch.Tensor:
        arr = np.asarray(patch, dtype=np.float32)
        if arr.ndim != 3:
            raise InputError(f"patch_external must be one patch (C, S, S), got shape {arr.shape}")
        if self._channels_last():
            arr = np.moveaxis(arr, -1, 0)
        lo = float(self._range.lo.flat[0])
        u = (arr - lo) / self._range.width("a patch")
        return torch.from_numpy(np.clip(u, 0, 1)).to(self.estimator.device)

    def generate(
        self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """Train the patch on ``x``; returns ``(patch, mask)`` as ``AdversarialPatchPyTorch`` does."""
        if kwargs.get("mask") is not None:
            raise ConfigError(
                f"{type(self).__name__}: robustkit samples training placements over the whole image; "
                "location masks apply to apply_patch(x, scale, mask=...)"
            )
        kwargs.pop("mask", None)
        kwargs.pop("shuffle", None)
        attack, model, xt = self._start(x, kwargs)
        n = xt.shape[0]
        with eval_mode(model):
            labels = self._predict(model, xt)
            if y is not None:
                given = labels_from(y, n, self.estimator.nb_classes)
                if getattr(attack, "targeted", False):
                    classes = np.unique(given)
                    if classes.size != 1:
                        raise InputError(
                            f"{type(self).__name__} trains one universal patch for one target class; "
                            f"y holds {classes.size} classes ({classes[:5].tolist()}...)"
                        )
                    attack = attack.replace(target_class=int(classes[0]))
                else:
                    labels = torch.from_numpy(given).to(xt.device)
            if "train_samples" in self.fields and "train_samples" not in self._explicit:
                attack = attack.replace(train_samples=n)
            self._fitted = attack.fit(
                model, xt, labels, generator=torch.Generator().manual_seed(self._seed())
            )
        texture = self._fitted.patch
        alpha = shape_mask(self._fitted.patch_type, texture.shape[-2], texture.shape[-1]).expand_as(
            texture.cpu()
        )
        mask = alpha.numpy().astype(np.float32)
        return self._to_estimator(texture), (np.moveaxis(mask, 0, -1) if self._channels_last() else mask)

    def apply_patch(
        self,
        x: np.ndarray,
        scale: float,
        patch_external: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Paste the patch into every image at a random rotation (up to ``rotation_max``) and location;
        its side (diameter for a circle) is ``scale`` times the image's shorter edge."""
        if not isinstance(scale, int | float) or not 0 < scale <= 1:
            raise ConfigError(f"scale must be in (0, 1], got {scale!r}")
        if patch_external is None and self._fitted is None:
            raise ConfigError(f"{type(self).__name__}: call generate first or pass patch_external")
        fitted = self._fitted if self._fitted is not None else self.robustkit_attack()
        texture = self._fitted.patch if patch_external is None else self._from_estimator(patch_external)
        xt = self._inputs(x)
        if xt.ndim != 4:
            raise ConfigError(f"{type(self).__name__}.apply_patch pastes into images (N, C, H, W)")
        n, _, h, w = xt.shape
        gens = sample_generators(self._seed(), range(n))
        place = sample_placement(
            n, gens, (h, w), float(min(h, w)), rotation_max=float(fitted.rotation_max), scale_min=float(scale),
            scale_max=float(scale), distortion_scale_max=float(fitted.distortion_scale_max), device=xt.device,
        )  # fmt: skip
        if mask is not None:
            place["center"] = self._centers(mask, n, h, w, gens, xt.device)
        out = fitted.render_at(xt, texture.to(xt.device, xt.dtype), place)
        return self._out(out, x)

    def _out(self, out: torch.Tensor, x: np.ndarray) -> np.ndarray:
        from .boundary import from_unit

        return from_unit(out, self._range, self._layout, np.asarray(x))

    @staticmethod
    def _centers(mask: Any, n: int, h: int, w: int, gens, device) -> torch.Tensor:
        """One patch centre per image, uniform over the True pixels of ART's location mask."""
        m = np.asarray(mask)
        if m.dtype != bool or m.ndim != 3 or m.shape[0] not in (1, n) or m.shape[1:] != (h, w):
            raise InputError(f"mask must be a bool array (1, {h}, {w}) or ({n}, {h}, {w}) of allowed patch centres, "
                             f"got {m.dtype} {m.shape}")  # fmt: skip
        m = np.broadcast_to(m, (n, h, w))
        counts = m.reshape(n, -1).sum(1)
        if (counts == 0).any():
            raise InputError("mask allows no patch centre for some images")
        pick = (uniform((n,), gens, "cpu").numpy() * counts).astype(np.int64).clip(max=counts - 1)
        centers = []
        for i in range(n):
            rows, cols = np.nonzero(m[i])
            centers.append((float(cols[pick[i]]), float(rows[pick[i]])))
        return torch.tensor(centers, device=device, dtype=torch.float32)
