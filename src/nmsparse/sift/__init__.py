"""Sparse Iso-FLOP Transformations (Sparse-IFT) and FLOP counting.

The transforms build plain ``nn.Linear`` / ``nn.Conv1d/2d/3d`` layers and attach nmsparse.nn's one mask
container, ``NMMask``, to their weights (random static masks, masked gradients). Dynamic sparse
training (SET, RigL) is an update policy of that container: ``nmsparse.nn.set_update_``.

>>> import nmsparse.sift as sift
>>> from nmsparse.examples import small_cnn
>>> model = sift.transform(small_cnn(), "parallel", 0.75)
>>> sift.count_flops(model, (1, 1, 8, 8)).total == sift.count_flops(small_cnn(), (1, 1, 8, 8)).total
True
"""

from ._common import FAMILIES
from .doped import SparseDoped
from .factorized import SparseFactorized
from .flops import FlopReport, LayerFlops, count_flops
from .parallel import SparseParallel
from .transforms import transform

__all__ = [
    "FAMILIES",
    "transform",
    "count_flops",
    "FlopReport",
    "LayerFlops",
    "SparseParallel",
    "SparseFactorized",
    "SparseDoped",
]
