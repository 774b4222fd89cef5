"""Sparse Iso-FLOP Transformations (Sparse-IFT), FLOP counting and dynamic sparse training.

>>> import nmsparse.sift as sift
>>> from nmsparse.examples import small_cnn
>>> model = sift.transform(small_cnn(), "parallel", 0.75)
>>> sift.count_flops(model, (1, 1, 8, 8)).total == sift.count_flops(small_cnn(), (1, 1, 8, 8)).total
True
"""

from ._common import FAMILIES
from .doped import SparseDoped
from .dynamic import DynamicSparsity, drop_fraction_schedule
from .factorized import SparseFactorized
from .flops import FlopReport, LayerFlops, count_flops
from .masked import MaskedConv2d, MaskedLinear, apply_masks_, is_masked, masked_layers
from .parallel import SparseParallel
from .regrow import drop_and_regrow
from .transforms import transform

__all__ = [
    "FAMILIES",
    "transform",
    "count_flops",
    "FlopReport",
    "LayerFlops",
    "MaskedLinear",
    "MaskedConv2d",
    "SparseParallel",
    "SparseFactorized",
    "SparseDoped",
    "apply_masks_",
    "is_masked",
    "masked_layers",
    "DynamicSparsity",
    "drop_fraction_schedule",
    "drop_and_regrow",
]
