"""Checkpoint conversion: read/write checkpoints (safetensors, HF folders, torch weights-only files),
streaming one-shot N:M pruning of state dicts and checkpoint files, pattern reports. Pruning *models*
with calibration (``prune_``) lives in :mod:`nmsparse.oneshot`.

See ``docs/convert.md``. ``n:m`` means n entries KEPT in every group of m; ``"n:mT"`` is transposable.
"""

from ..errors import CheckpointError, ConvertError
from .formats import Checkpoint, detect_format, iter_tensors, read_checkpoint, write_checkpoint
from .prune import LayerResult, PruneResult, json_path_for, prune_state_dict
from .stream import prune_checkpoint
from .report import CheckpointReport, WeightReport, densest_patterns, report_checkpoint, report_state_dict

__all__ = [
    "CheckpointError",
    "ConvertError",
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
]
