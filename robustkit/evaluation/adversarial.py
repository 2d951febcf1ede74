"""The adversarial examples of a run (``evaluate(..., keep_adversarial=True)``), read back from its store.

With ``keep_adversarial`` every attacked sample's ``x_adv`` is stored exactly (the attack's own dtype,
not the 8-bit gallery copy) beside the gallery example, in the same transaction as its outcome, so a
resumed run holds every example once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..registry import suggest
from .store import STORE_FILE, Store, unpack_tensors

KEY = "x_adv"


def load_adversarial(
    run_dir: str | Path, attack: str, *, successful_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, x_adv) of attack ``attack`` (a suite entry name, e.g. ``pgd@8/255``) in ``run_dir``: the
    dataset indices of every attacked sample (the clean-misclassified ones are not attacked) and their
    adversarial inputs, stacked in index order. ``successful_only``: only the samples whose success was
    confirmed (the model misclassifies ``x_adv``, within the threat model's bound)."""
    path = Path(run_dir) / STORE_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no results ({STORE_FILE}): is it a finished robustkit run?")
    store = Store(path)
    try:
        ids = {a["name"]: a["id"] for a in store.attacks()}
        if attack not in ids:
            raise ConfigError(
                f"run {Path(run_dir).name} has no attack '{attack}'{suggest(attack, list(ids))}; its attacks: "
                f"{', '.join(ids) or '(none yet)'}"
            )
        rows = [o for o in store.outcomes(ids[attack]) if o.attacked and not (successful_only and o.robust)]
        kept = {i: unpack_tensors(blob).get(KEY) for i, blob in store.examples(ids[attack]).items()}
    finally:
        store.close()
    missing = [o.idx for o in rows if kept.get(o.idx) is None]
    if missing:
        raise ConfigError(
            f"attack '{attack}' of run {Path(run_dir).name} has no stored adversarial example for {len(missing)} "
            f"attacked sample(s) (first: index {missing[0]}): the run was not evaluated with keep_adversarial=True. "
            "Evaluate again with keep_adversarial=True under a new name (or overwrite=True)"
        )
    indices = torch.tensor([o.idx for o in rows], dtype=torch.long)
    if not rows:
        return indices, torch.empty(0)
    return indices, torch.stack([kept[o.idx] for o in rows])
