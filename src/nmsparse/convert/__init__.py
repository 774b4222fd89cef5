"""Checkpoint conversion: read/write checkpoints, one-shot N:M pruning, pattern reports, calibrated
one-shot pruning of models (``prune_``: magnitude, Wanda, SparseGPT, AdaPrune and chains).

See ``docs/convert.md``. ``n:m`` means n entries KEPT in every group of m; ``"n:mT"`` is transposable.
"""

from .adaprune import AdaPruneReport, LayerFit, adaprune
from .calibration import reestimate_batchnorm
from .oneshot import LayerPrune, PruneReport, prune_
from ..errors import CheckpointError, ConvertError
from .formats import FORMATS, Checkpoint, detect_format, iter_tensors, read_checkpoint, write_checkpoint
from .prune import LayerResult, PruneResult, json_path_for, prune_state_dict
from .stream import prune_checkpoint
from .report import CheckpointReport, WeightReport, densest_patterns, report_checkpoint, report_state_dict
from .rules import RAGGED_CHOICES, Selector

__all__ = [
    "adaprune",
    "AdaPruneReport",
    "LayerFit",
    "reestimate_batchnorm",
    "prune_",
    "PruneReport",
    "LayerPrune",
    "CheckpointError",
    "ConvertError",
    "FORMATS",
    "Checkpoint",
    "detect_format",
    "read_checkpoint",
    "iter_tensors",
    "write_checkpoint",
    "LayerResult",
    "PruneResult",
    "prune_checkpoint",
    "prune_state_dict",
    "json_path_for",
    "CheckpointReport",
    "WeightReport",
    "densest_patterns",
    "report_checkpoint",
    "report_state_dict",
    "RAGGED_CHOICES",
    "Selector",
]
