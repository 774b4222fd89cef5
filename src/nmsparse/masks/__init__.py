"""Which entries survive: row-wise, transposable and unstructured masks, and mask checks."""

from .api import find_mask, solve_mask
from .check import check_mask, is_valid_mask
from .methods import available_methods
from .result import MaskResult
from .unstructured import unstructured_mask

__all__ = [
    "find_mask",
    "solve_mask",
    "check_mask",
    "is_valid_mask",
    "available_methods",
    "MaskResult",
    "unstructured_mask",
]
