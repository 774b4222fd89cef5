"""nmsparse: N:M and transposable N:M structured sparsity for PyTorch."""

from .errors import MaskError, MethodError, NMSparseError, PatternError, ScoreError, ShapeError
from .pattern import NMPattern

__version__ = "0.1.0"

__all__ = [
    "NMPattern",
    "NMSparseError",
    "PatternError",
    "ShapeError",
    "ScoreError",
    "MethodError",
    "MaskError",
    "__version__",
]
