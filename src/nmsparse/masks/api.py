"""find_mask / solve_mask: the front door to every mask family."""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..errors import ArgumentError, ShapeError, guard_resources
from ..layout import MatrixLayout, matrix_layout
from ..pattern import NMPattern, PatternLike
from ._inputs import score_source
from .methods import ROWWISE_METHOD, TRANSPOSABLE_METHODS, resolve_method
from .result import MaskResult
from ._threads import kernel_threads
from .rowwise import topn_matrix
from .transposable import padding_score, solve_transposable_matrix

@guard_resources("solve_mask")
def solve_mask(
    weight: torch.Tensor,
    pattern: PatternLike,
    *,
    method: Optional[str] = None,
    scores: Optional[torch.Tensor] = None,
    dim: Optional[int] = None,
    pad: bool = False,
) -> MaskResult:
    """Find the mask of ``weight`` for ``pattern`` and report how good it is.

    Parameters
    ----------
    weight : torch.Tensor
        Weight of any shape with at least one dimension; groups run as described in
        :mod:`nmsparse.layout` (``(out, in)`` along ``in``; conv ``(out, in, kh, kw)`` along
        ``in`` at each kernel position; others along ``dim``).
    pattern : str or NMPattern
        ``"n:m"`` (row-wise) or ``"n:mT"`` (transposable): n entries KEPT per group of m.
    method : str, optional
        See :func:`available_methods`. Default: ``"topn"`` row-wise, ``"exact"`` transposable.
    scores : torch.Tensor, optional
        Non-negative scores of the weight's shape; default ``|weight|``. The mask maximises the
        sum of kept scores.
    dim : int, optional
        Axis to group along, overriding the default convention.
    pad : bool
        Allow a grouped axis (or, for transposable patterns, a row count) that is not a multiple
        of m. Partial groups keep at most n entries (the top ones, up to n of them);
        partial tiles keep at most n per row and column, as many real entries as the tile allows.
        Padding may grow the matrix view to at most 8x the weight's entries unless it stays under
        2**24 entries (:mod:`nmsparse.layout`); beyond that a :class:`ShapeError` is raised.

    Notes
    -----
    Any input a user holds is accepted: ``nn.Parameter``s and ``requires_grad`` tensors (read
    through ``detach()``; the mask never requires grad), views, non-contiguous and channels_last
    tensors, fp16/bf16/fp32/fp64 weights, numpy arrays. Integer, bool and complex weights need
    ``scores=``; meta tensors (no values) and sparse layouts are refused with a clear error.
    The caller's torch and numba thread counts are restored before returning.

    Returns
    -------
    MaskResult
        ``mask`` (bool, the weight's shape and device), ``objective`` (sum of kept scores),
        ``optimal``, ``method``, ``seconds``, ``pattern`` and ``info``.

    Examples
    --------
    >>> w = torch.randn(8, 8)
    >>> r = solve_mask(w, "2:4T")
    >>> r.optimal, r.mask.sum().item()
    (True, 32)
    """
    return _solve(weight, pattern, method, scores, dim, pad, "solve_mask")


def _solve(weight, pattern, method, scores, dim, pad, where: str) -> MaskResult:
    start = time.perf_counter()
    if not isinstance(pad, bool):
        raise ArgumentError(f"{where}: pad must be True or False, got {pad!r} ({type(pad).__name__}).")
    p = NMPattern.parse(pattern)
    name = resolve_method(p, method, where)
    source, absolute = score_source(weight, scores, where)
    layout = matrix_layout(source.shape, dim, where=where)
    if layout.is_ragged(p.m, p.transposable) and not pad:
        raise ShapeError(_ragged_message(where, p, layout))
    layout.check_padding(p.m, p.transposable)  # before any allocation: "1:100000T" on 8x8 is refused
    with kernel_threads(source.numel(), source.device.type == "cpu"):
        mask, info, optimal, objective = _solve_layout(source, absolute, layout, p, name)
    return MaskResult(mask, objective, optimal, name, time.perf_counter() - start, p, info)


def _solve_layout(source, absolute, layout, p, name):
    info = {}
    if p.transposable:
        if layout.is_ragged(p.m, True):
            s = source.abs() if absolute else source
            matrix, tile_abs = layout.to_matrix(s.double(), p.m, tiles=True, fill=padding_score(s, p.m)), False
        else:
            # The tile kernels take |.| on the fly: no weight-sized copy of the scores.
            matrix, tile_abs = layout.to_matrix(source), absolute
        mask_matrix, info = solve_transposable_matrix(matrix, p.n, p.m, TRANSPOSABLE_METHODS[name], tile_abs)
        optimal = TRANSPOSABLE_METHODS[name].optimal
    else:
        # Padding scores of -1 sort below every real (non-negative) score.
        matrix = layout.to_matrix(source.abs() if absolute else source, p.m, fill=-1.0)
        mask_matrix = topn_matrix(matrix, p.n, p.m)
        info["groups"] = matrix.numel() // p.m
        optimal = True
    mask = layout.from_matrix(mask_matrix, p.m).to(source.device)
    info["score_total"], objective = _total_and_kept(source, mask, absolute)
    return mask, info, optimal, objective


@guard_resources("find_mask")
def find_mask(
    weight: torch.Tensor,
    pattern: PatternLike,
    *,
    method: Optional[str] = None,
    scores: Optional[torch.Tensor] = None,
    dim: Optional[int] = None,
    pad: bool = False,
) -> torch.Tensor:
    """Bool mask (True = kept) of the weight's shape for ``pattern``; see :func:`solve_mask`.

    Examples
    --------
    >>> w = torch.tensor([[0.1, -3.0, 2.0, 0.5]])
    >>> find_mask(w, "2:4")
    tensor([[False,  True,  True, False]])
    """
    return _solve(weight, pattern, method, scores, dim, pad, "find_mask").mask


def _ragged_message(where: str, p: NMPattern, layout: MatrixLayout) -> str:
    if layout.group_len % p.m:
        return (
            f"{where}: pattern {p} groups {layout.describe()} in chunks of {p.m}, but a weight of shape "
            f"{layout.shape} has {layout.group_len} there. Pad it, or pass pad=True "
            f"(partial groups then keep at most {p.n})."
        )
    return (
        f"{where}: pattern {p} cuts the {layout.rows}x{layout.cols} matrix view of a weight of shape "
        f"{layout.shape} into {p.m}x{p.m} tiles, but {layout.rows} rows is not a multiple of {p.m}. "
        f"Pad it, or pass pad=True (partial tiles then keep at most {p.n} per row and column)."
    )


def _total_and_kept(t: torch.Tensor, mask: torch.Tensor, absolute: bool) -> tuple:
    """(sum of all scores, sum of kept scores) in float64, deterministic on any thread count.

    The scores are ``|t|`` if ``absolute`` else ``t``.
    """
    if t.device.type == "cpu":
        from ._sum_kernels import total_and_kept

        flat = t.contiguous().reshape(-1).numpy()
        return total_and_kept(flat, mask.contiguous().reshape(-1).numpy(), absolute)
    s64 = t.double().abs() if absolute else t.double()
    return float(s64.sum()), float(torch.where(mask, s64, 0.0).sum())


__all__ = ["find_mask", "solve_mask", "ROWWISE_METHOD"]
