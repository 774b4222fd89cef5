"""Validation of weights and scores shared by every mask family.

Scores choose the mask: ``|weight|`` by default, or any non-negative tensor of the weight's shape
(e.g. ``|W| * ||x||`` as in Wanda). NaN/Inf and negative scores are errors, never a silently
wrong mask.

Inputs are taken as users hold them: ``nn.Parameter``s and tensors with ``requires_grad`` are
read through ``detach()`` (a mask is not differentiable, and the caller's autograd graph is left
alone), views and any memory format are accepted, and fp16/bf16 are read exactly in fp32. Tensors
without values (``meta``) or in a sparse layout are refused with a clear error.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import ScoreError, ShapeError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(x, what: str, where: str) -> torch.Tensor:
    """``x`` as a detached, strided tensor with values (a numpy array is wrapped without a copy)."""
    if isinstance(x, torch.Tensor):
        return _usable(x.detach(), what, where)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None and isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise ScoreError(f"{where}: {what} is a numpy array of dtype {x.dtype}; expected numbers. Convert it with np.asarray(x, dtype=np.float32).")
        return torch.as_tensor(x)
    raise ShapeError(f"{where}: {what} must be a torch.Tensor (or numpy array), got {type(x).__name__}.")


def _usable(t: torch.Tensor, what: str, where: str) -> torch.Tensor:
    if t.device.type == "meta":
        raise ScoreError(
            f"{where}: {what} is a meta tensor (shape {tuple(t.shape)}), which holds no values to work with; "
            f"materialise it first (e.g. model.to_empty(device='cpu') and load the weights)."
        )
    if t.layout != torch.strided:
        raise ShapeError(f"{where}: {what} has layout {t.layout}; expected a dense tensor. Convert it with .to_dense().")
    if type(t).__name__ == "DTensor":  # checked by name: torch.distributed may not be importable here
        raise ShapeError(f"{where}: {what} is a DTensor (sharded); pass a plain tensor: the whole one "
                         f"({what}.full_tensor()) or this rank's shard ({what}.to_local()).")
    if t.is_quantized:
        raise ScoreError(f"{where}: {what} is a quantized tensor ({t.dtype}); pass real values: {what}.dequantize().")
    return t


def prepare_scores(weight, scores: Optional[torch.Tensor], where: str) -> torch.Tensor:
    """Return finite, non-negative float scores of the weight's shape (float32, or float64 for fp64 input).

    Half-precision inputs are upcast to float32 exactly (every fp16/bf16 value is an fp32 value),
    so the mask does not depend on the input dtype beyond the values it holds.
    """
    source, absolute = score_source(weight, scores, where)
    return source.abs() if absolute else source


def score_source(weight, scores: Optional[torch.Tensor], where: str) -> Tuple[torch.Tensor, bool]:
    """Validated scores without a weight-sized copy where possible.

    Returns ``(t, absolute)``: the scores are ``|t|`` if ``absolute`` else ``t``. With the default
    scores, ``t`` is the fp32/fp64 weight itself, so kernels that can take the absolute value on
    the fly save a full pass and a weight-sized allocation.
    """
    weight = as_tensor(weight, "weight", where)
    if weight.dim() == 0:
        raise ShapeError(f"{where}: weight is a 0-d tensor; masks need at least 1 dimension.")
    if weight.numel() == 0:
        raise ShapeError(f"{where}: weight of shape {tuple(weight.shape)} is empty; nothing to mask.")
    if scores is None:
        if weight.dtype not in _FLOAT_DTYPES:
            raise ScoreError(
                f"{where}: weight has dtype {weight.dtype}; expected a floating dtype "
                f"(float16, bfloat16, float32, float64). Convert it with weight.float(), or pass scores=."
            )
        t = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight
        # One reduction, no temporary: the extremes are finite iff every entry is (NaN propagates).
        low, high = torch.aminmax(t)
        if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
            _raise_not_finite(weight, "weight", where)
        return t, True
    s = as_tensor(scores, "scores", where)
    if tuple(s.shape) != tuple(weight.shape):
        raise ShapeError(f"{where}: scores must have the weight's shape {tuple(weight.shape)}, got {tuple(s.shape)}.")
    if s.dtype == torch.bool or s.is_complex():
        raise ScoreError(
            f"{where}: scores must be real, non-negative numbers, got dtype {s.dtype}. "
            f"Pass e.g. scores.abs().float() (complex) or scores.float() (bool)."
        )
    if s.dtype not in _FLOAT_DTYPES:
        s = s.to(torch.float64)
    elif s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    low, high = torch.aminmax(s)
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        _raise_not_finite(s, "scores", where)
    if float(low) < 0:
        idx = _first_index(s < 0)
        raise ScoreError(
            f"{where}: scores must be non-negative (the objective is the sum of kept scores); "
            f"scores{list(idx)} = {float(s[idx]):g}. Pass |scores| or shift them."
        )
    return s, False


def _raise_not_finite(t: torch.Tensor, what: str, where: str) -> None:
    bad = ~torch.isfinite(t)
    idx = _first_index(bad)
    raise ScoreError(
        f"{where}: {what} contains NaN or Inf ({int(bad.sum())} entries; first at {what}{list(idx)} = "
        f"{float(t[idx])}). Fix the tensor (e.g. torch.nan_to_num) before computing a mask."
    )


def _first_index(flags: torch.Tensor) -> tuple:
    # Unravelled by hand: torch.unravel_index imports sympy on first use, which adds a warning filter.
    flat = int(torch.nonzero(flags.reshape(-1))[0])
    index = []
    for size in reversed(flags.shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))
