"""Arguments of :func:`nmsparse.prune_`: the algorithm chain, the pattern or density, the options,
and the check every pruning step's result passes before it is written into the model.

Option ranges (checked before any work; nothing is clamped):

* ``damp``: a finite number with ``0 <= damp <= DAMP_MAX`` (1). λ = damp · mean(diag H) is added to
  the diagonal of H = XᵀX (SparseGPT, ``lsq``). At damp = 1, λ equals the mean input energy per
  feature, so H + λI is already dominated by λI; more damping only removes what the updates know
  about H (they tend to zero: the plain masked weights), which is why the retries of a failed
  factorisation stop at 1 too (:func:`~nmsparse.oneshot.inverse_cholesky`), and huge values
  (1e307) overflow λ or its inverse to Inf/NaN. For no update at all use ``"magnitude"`` or ``"wanda"``.
* ``blocksize``: an int >= 1 (rounded down to a multiple of m, at least m; a value above the layer's
  column count makes the layer one block).
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

from ..errors import ConvertError, MethodError
from ..pattern import NMPattern

__all__ = ["ALGORITHMS", "REFINEMENTS", "DAMP_MAX", "parse_algorithm", "parse_spec", "check_topk", "check_options",
           "check_step_result"]

ALGORITHMS = ("magnitude", "wanda", "sparsegpt", "adaprune")
REFINEMENTS = ("adaprune", "sparsegpt", "lsq")
DAMP_MAX = 1.0  # λ <= mean(diag H): see the module docstring


def parse_algorithm(algorithm, where: str = "prune_") -> List[str]:
    """``"sparsegpt+adaprune"`` -> ``["sparsegpt", "adaprune"]``; unknown names are a MethodError."""
    if not isinstance(algorithm, str) or not algorithm.strip():
        raise MethodError(f"{where}: algorithm must be a string such as 'sparsegpt' or 'sparsegpt+adaprune', got {algorithm!r}.")
    steps = [s.strip().lower() for s in algorithm.split("+")]
    if steps[0] not in ALGORITHMS:
        raise MethodError(f"{where}: unknown algorithm {steps[0]!r} in {algorithm!r}; known: {', '.join(ALGORITHMS)}.")
    for s in steps[1:]:
        if s not in REFINEMENTS:
            raise MethodError(
                f"{where}: {s!r} cannot refine a fixed mask in {algorithm!r}; refinements after '+': {', '.join(REFINEMENTS)}."
            )
    return steps

def parse_spec(pattern, where: str) -> Union[NMPattern, float]:
    """An NMPattern or a density in [0, 1]: the library's one parser (a bad one is a PatternError everywhere)."""
    from ..pattern import parse_spec as parse

    return parse(pattern, where)

def check_topk(method, where: str) -> Optional[str]:
    if method not in (None, "exact", "topk"):
        raise MethodError(f"{where}: unstructured densities keep the top-k per tensor (method None, 'exact' or 'topk'), got {method!r}.")
    return "topk"

def check_options(damp, blocksize, sequential, where: str) -> None:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or not 0 <= damp <= DAMP_MAX:
        raise ConvertError(
            f"{where}: damp must be a finite number with 0 <= damp <= {DAMP_MAX:g} (λ = damp · mean(diag H); beyond 1 "
            f"the damping drowns H), got {damp!r}; use e.g. 0.01 (SparseGPT's default), or algorithm='magnitude' for no update."
        )
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConvertError(f"{where}: blocksize must be an int >= 1 (columns per SparseGPT lazy block, e.g. 128), got {blocksize!r}.")
    if not isinstance(sequential, bool):
        raise ConvertError(f"{where}: sequential must be True or False, got {sequential!r}.")


def _step_cause(step: str, o: dict, scale: float) -> str:
    """Which option (or, for weights too large for the step's arithmetic, which property of the
    layer) drives a step's weight update, and what to change. ``scale``: max |W| of the dense layer."""
    import torch

    too_large = "rescale the layer's weights, or exclude= it from this call"
    if step == "adaprune":
        if scale > torch.finfo(torch.float32).max:
            return f"AdaPrune fits in float32, and the layer's weights (up to {scale:.3g}) exceed float32's range; {too_large}"
        return f"Adam diverged (lr={o['lr']:g}, iterations={o['iterations']}); use a smaller lr (default 1e-3)"
    if scale > 1e150:  # its square, as in w²/U_jj² or the Gram products, overflows float64
        return f"the layer's weights (up to {scale:.3g}) are too large for its float64 arithmetic; {too_large}"
    if step == "sparsegpt":
        return (f"its OBS updates divide by the damped Hessian H + λI (damp={o['damp']:g}); raise damp (at most "
                f"{DAMP_MAX:g}), or prune this layer with 'magnitude' or 'wanda' (exclude= it from this call)")
    if step == "lsq":
        return (f"its least-squares solve uses the damped Gram matrix (damp={o['damp']:g}); raise damp (at most "
                f"{DAMP_MAX:g}), or refine with '+sparsegpt' or '+adaprune' instead")
    return f"the layer's weights or calibration inputs are too large for the computation; {too_large}"


def check_step_result(w, b, weight_dtype, bias_dtype, *, step: str, layer: str, algorithm: str, o: dict,
                      scale: float = 0.0) -> None:
    """Raise :class:`ConvertError` unless the weights ``w`` and bias ``b`` (or None) a pruning step
    produced are finite, also once rounded to the dtypes the model stores them in (a refit can move a
    weight beyond float16's range). Called before anything is written into the model, so on an error
    ``prune_`` leaves the model unchanged; the message names the layer, the step, the option that
    drove the update and the fix (``scale``, the dense weights' max |W|, tells an option's effect from
    weights too large for the step's arithmetic)."""
    import torch

    for what, t, dtype in (("weights", w, weight_dtype), ("bias", b, bias_dtype)):
        if t is None:
            continue
        if bool(torch.isfinite(t).all()):
            if not t.dtype.is_floating_point or t.dtype == dtype or bool(torch.isfinite(t.to(dtype)).all()):
                continue
            top = float(t.abs().max())
            problem = (f"gave {what} up to {top:.3g}, beyond {str(dtype).replace('torch.', '')}'s range "
                       f"(±{torch.finfo(dtype).max:.3g}) the model stores them in")
        else:
            bad = int((~torch.isfinite(t)).sum())
            problem = f"gave non-finite {what} ({bad} of {t.numel()} entries NaN/Inf)"
        raise ConvertError(
            f"{o['where']}: layer {layer}: step {step!r} of algorithm {algorithm!r} {problem}: {_step_cause(step, o, scale)}."
        )
