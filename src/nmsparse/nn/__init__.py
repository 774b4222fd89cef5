"""Attaching N:M masks to modules for training: sparsify_, update_masks_, squash_, summary,
STE / SR-STE, and sparse linear products (GPU 2:4 kernels with a CPU reference)."""

from .parametrization import NMMask
from .sparse_linear import CompressedWeight, sparse_linear
from .sparsify import sparsified_parameters, sparsify_, squash_, update_masks_
from .ste import masked_weight_ste
from .summary import SparsitySummary, kept_and_density, summary

__all__ = [
    "sparsify_",
    "update_masks_",
    "squash_",
    "summary",
    "SparsitySummary",
    "kept_and_density",
    "sparsified_parameters",
    "NMMask",
    "masked_weight_ste",
    "sparse_linear",
    "CompressedWeight",
]
