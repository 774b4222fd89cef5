"""Attaching N:M masks to modules for training: one mask container (``NMMask``) with gradient modes
(STE, SR-STE, masked) and update policies (refresh, static, SET, RigL); sparsify_, attach_mask_,
update_masks_, squash_, summary; state-dict helpers; sparse linear products (GPU 2:4 kernels with
a CPU reference)."""

from .attach import attach_mask_
from .reattach import reattach_masks_
from .distributed import RefreshPlan
from .driver import track_optimizers, watch_optimizer_
from .fsdp import refresh_plan
from .parametrization import NMMask
from .policies import drop_and_regrow, drop_fraction_schedule
from .sparse_linear import CompressedWeight, sparse_linear
from .sparsify import set_update_, sparsified_parameters, sparsify_, squash_, update_masks_
from .state_dict import load_plain_state_dict_, plain_state_dict
from .ste import masked_weight_ste
from .summary import SparsitySummary, kept_and_density, summary

__all__ = [
    "sparsify_",
    "attach_mask_",
    "reattach_masks_",
    "set_update_",
    "update_masks_",
    "squash_",
    "summary",
    "SparsitySummary",
    "kept_and_density",
    "sparsified_parameters",
    "plain_state_dict",
    "load_plain_state_dict_",
    "track_optimizers",
    "watch_optimizer_",
    "drop_and_regrow",
    "drop_fraction_schedule",
    "NMMask",
    "refresh_plan",
    "RefreshPlan",
    "masked_weight_ste",
    "sparse_linear",
    "CompressedWeight",
]
