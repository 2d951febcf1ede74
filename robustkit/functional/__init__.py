"""Pure tensor functions: losses, norms and projections, placement, penalties, video helpers."""

from .losses import LOSSES, ce_loss, cw_margin, dlr_loss, get_loss, margin, targeted_dlr_loss
from .projection import flat_norm, project_l2, project_linf, random_l2, random_linf, unit_l2

__all__ = [
    "LOSSES",
    "ce_loss",
    "cw_margin",
    "dlr_loss",
    "flat_norm",
    "get_loss",
    "margin",
    "project_l2",
    "project_linf",
    "random_l2",
    "random_linf",
    "targeted_dlr_loss",
    "unit_l2",
]
