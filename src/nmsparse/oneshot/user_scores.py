"""The user's scores for one layer (``scores=`` of ``prune_`` and ``permute_``): calling their
callable and checking what it, or their dict, gives.

One rule for both entry points: what the callable raises becomes a :class:`ScoreError` naming the
layer, with the original as ``__cause__`` (a library error passes through as it is); a result
that is not a tensor of the weight's shape is a ``ScoreError`` too, never taken silently. The
values themselves are checked by the mask solvers' rules (:func:`nmsparse.masks._inputs.score_source`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NMSparseError, ScoreError, quote_error

__all__ = ["call_scores", "score_tensor"]


def call_scores(scores, module_name: str, module: nn.Module, layer: str, where: str):
    """``scores(module_name, module)``, its exceptions as a ScoreError naming ``layer``."""
    try:
        return scores(module_name, module)
    except NMSparseError:
        raise
    except Exception as err:  # the user's code: one rule, the original kept as the cause
        raise ScoreError(f"{where}: layer {layer}: the scores callable failed ({quote_error(err)}); it is called as "
                         "scores(module_name, module) and must return a non-negative tensor of the weight's shape."
                         ) from err


def score_tensor(given, module: nn.Module, layer: str, where: str):
    """``given`` if it is a tensor of ``module.weight``'s shape, else a ScoreError naming ``layer``."""
    shape = tuple(module.weight.shape)
    if not isinstance(given, torch.Tensor) or tuple(given.shape) != shape:
        got = f"shape {tuple(given.shape)}" if isinstance(given, torch.Tensor) else type(given).__name__
        raise ScoreError(f"{where}: layer {layer}: scores must be a tensor of the weight's shape {shape}, got {got}.")
    return given
