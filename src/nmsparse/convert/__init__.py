"""Checkpoint conversion: read/write checkpoints, one-shot N:M pruning, pattern reports, AdaPrune.

See ``docs/convert.md``. ``n:m`` means n entries KEPT in every group of m; ``"n:mT"`` is transposable.
"""

from .adaprune import AdaPruneReport, LayerFit, adaprune
from .calibration import reestimate_batchnorm
from ..errors import CheckpointError, ConvertError
from .formats import FORMATS, Checkpoint, detect_format, read_checkpoint, write_checkpoint
from .prune import LayerResult, PruneResult, json_path_for, prune_checkpoint, prune_state_dict
from .report import CheckpointReport, WeightReport, densest_patterns, report_checkpoint, report_state_dict
from .rules import RAGGED_CHOICES, Selector

__all__ = [
    "adaprune",
    "AdaPruneReport",
    "LayerFit",
    "reestimate_batchnorm",
    "CheckpointError",
    "ConvertError",
    "FORMATS",
    "Checkpoint",
    "detect_format",
    "read_checkpoint",
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
