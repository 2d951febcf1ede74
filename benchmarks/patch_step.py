"""One EOT patch-training iteration: robustkit ``patch`` vs ART ``AdversarialPatchPyTorch``.

Equal work per iteration: robustkit pastes the patch into ``samples`` random placements of each of
``batch`` images (``batch * samples`` model rows, one forward and one backward pass, one Adam step).
ART draws one random transformation per row and has no per-image sample count, so it gets the same
images repeated ``samples`` times with ``batch_size = batch * samples``: the same rows per
iteration, the same model passes, each row with its own random rotation / scale / location.

Both train for ``iters`` iterations per timed call (ART: ``max_iter = iters`` over exactly one
batch); the figure is seconds per iteration. Both use a circle patch, rotation up to 22.5 degrees and
Adam; the patch sides differ slightly by construction (robustkit: 10% of the image area at scale 1,
ART: ``patch_shape`` of the same side, scaled by 0.3 to 0.4 of the image) which does not change the
work per iteration. ``robustkit fast path`` is the same fit behind ``--fold-bn --channels-last --amp bf16``
(``common.fast_copy``). ``bare fwd+bwd`` times the model alone on the same rows (one forward and one
input-gradient backward per iteration): the bound both libraries sit above.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import compare, fast_copy, frozen, input_gradient_pass, ratio, thawed


def patch_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int = 16, samples: int = 8, iters: int = 4,
    reps: int = 3, target: int = 0,
) -> dict[str, Any]:  # fmt: skip
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    from robustkit.attacks.patch import Patch

    keep = y != target
    x, y = x[keep][:batch], y[keep][:batch]
    k = int(model(x[:1]).shape[1])
    ours = Patch(max_iter=iters, batch_size=batch, train_samples=batch, eot={"n_samples": samples},
                 target_class=target)  # fmt: skip
    side = ours.texture_shape(*x.shape[1:])
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=k,
                            clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu")  # fmt: skip
    theirs = AdversarialPatchPyTorch(clf, rotation_max=22.5, scale_min=0.3, scale_max=0.4, learning_rate=0.1,
                                     max_iter=iters, batch_size=batch * samples, patch_shape=side,
                                     patch_type="circle", targeted=True, verbose=False)  # fmt: skip
    rows = x.repeat(samples, 1, 1, 1).cpu().numpy()
    onehot = np.eye(k, dtype=np.float32)[np.full(rows.shape[0], target)]
    counters: dict[str, int] = {}

    def robustkit_patch() -> None:
        thawed(model)
        fitted = ours.fit(model, x, y, generator=torch.Generator().manual_seed(0))
        counters["rows"] = batch * fitted.photometric.n_samples

    fast = fast_copy(model)

    def robustkit_fast() -> None:
        ours.fit(fast.fast, x, y, generator=torch.Generator().manual_seed(0))

    def art_patch() -> None:
        thawed(model)
        theirs.generate(rows, onehot)

    x_rows, y_rows = x.repeat(samples, 1, 1, 1), y.repeat(samples)

    def bare() -> None:  # the model's share of one iteration: forward + backward on the same rows
        frozen(model)
        for _ in range(iters):
            input_gradient_pass(model, x_rows, y_rows)

    fns = {
        "robustkit": robustkit_patch,
        "robustkit fast path": robustkit_fast,
        "ART": art_patch,
        "bare fwd+bwd": bare,
    }
    t = compare(fns, device=x.device, reps=reps, warmup=1)
    per_iter = {
        name: {k_: v / iters for k_, v in t[name].as_dict().items() if k_.endswith("_s") and k_ != "times_s"}
        for name in t
    }
    return {
        "batch": batch,
        "eot_samples": samples,
        "rows_per_iteration": counters.get("rows"),
        "iterations_per_call": iters,
        "seconds_per_iteration": per_iter,
        "speedup_vs_art": ratio(t, "ART", "robustkit"),
        "speedup_vs_art_fast_path": ratio(t, "ART", "robustkit fast path"),
        "robustkit_vs_bare": ratio(t, "robustkit", "bare fwd+bwd"),
        "patch_shape": list(side),
    }
