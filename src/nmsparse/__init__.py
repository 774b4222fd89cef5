"""nmsparse: N:M and transposable N:M structured sparsity for PyTorch.

``n:m`` means n entries KEPT in every group of m; ``"n:mT"`` is the transposable pattern (every
m x m tile keeps exactly n per row and per column). See the README for the conventions.
"""

from .diversity import count_masks, count_transposable_tile, log10_count_masks, log10_int
from .errors import (
    ArgumentError,
    CheckpointError,
    ConvertError,
    MaskError,
    MethodError,
    NMSparseError,
    PatternError,
    ScoreError,
    ShapeError,
)
from .masks import (
    MaskResult,
    available_methods,
    check_mask,
    find_mask,
    is_valid_mask,
    solve_mask,
    unstructured_mask,
)
from .nn import sparsify_, squash_, summary, update_masks_
from .pattern import NMPattern
from .oneshot import PermuteReport, permute_, prune_
from . import convert, oneshot, regularizers, sift  # noqa: E402  (nms.convert.prune_checkpoint, nms.oneshot.adaprune, nms.regularizers.WGSEFRegularizer, nms.sift.transform)

from ._version import __version__

__all__ = [
    "NMPattern",
    "find_mask",
    "solve_mask",
    "MaskResult",
    "available_methods",
    "check_mask",
    "is_valid_mask",
    "unstructured_mask",
    "sparsify_",
    "update_masks_",
    "squash_",
    "summary",
    "prune_",
    "permute_",
    "PermuteReport",
    "count_masks",
    "count_transposable_tile",
    "log10_count_masks",
    "log10_int",
    "NMSparseError",
    "PatternError",
    "ShapeError",
    "ScoreError",
    "MethodError",
    "MaskError",
    "ArgumentError",
    "ConvertError",
    "CheckpointError",
    "convert",
    "regularizers",
    "sift",
    "__version__",
]
