"""SparseGPT (Frantar & Alistarh, ICML 2023): one-shot pruning with optimal-brain-surgeon updates.

For a layer ``Y = X Wᵀ`` and ``H = XᵀX`` the columns (inputs) are processed left to right. When
column j is pruned in a row, the row's not-yet-processed weights absorb the error (OBS):

    δ_{>j} = -(w_j / [U]_jj) · U_{j, >j},      with UᵀU = (H + λI)⁻¹ upper triangular,

which is the least-squares optimal correction over columns > j with columns <= j frozen
(Sec. 3.2, Algorithm 1; the Cholesky rows give the inverse of H restricted to the remaining
columns). Updates inside a block of ``blocksize`` columns are applied column by column; the block's
accumulated error updates the rest of the matrix in one product ("lazy batch" updates).

Masks are chosen as the algorithm reaches them, from the saliency ``w_j² / [U]_jj²`` of the
*updated* weights:

* ``n:m``: at column c with c % m == 0 the strip ``[c, c+m)`` gets its mask for all rows at once
  (top n per row);
* ``n:mT``: that strip is exactly one column of m×m tiles, so the transposable solver
  (``method``: exact by default) chooses it from the saliency scores;
* a density: at the start of each block the block keeps its share of the layer's entries, top by
  saliency over the whole block (counts add up to exactly ``kept_count(rows·cols, density)``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..diversity import kept_count
from ..masks.methods import TRANSPOSABLE_METHODS, resolve_method
from ..masks.rowwise import topn_matrix
from ..masks.topk import topk_mask
from ..masks.transposable import solve_transposable_matrix
from ..pattern import NMPattern
from .hessian import inverse_cholesky

__all__ = ["sparsegpt", "zero_dead_inputs"]


def zero_dead_inputs(w: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inputs never active on the calibration data (zero diagonal) get ``H_jj = 1`` and a zero
    weight column, as in SparseGPT's reference: nothing can be learned about them, and H becomes
    invertible. Returns copies."""
    w, h = w.clone(), h.clone()
    dead = torch.diagonal(h) == 0
    if bool(dead.any()):
        idx = torch.nonzero(dead).flatten()
        h[idx, idx] = 1.0
        w[:, dead] = 0.0
    return w, h


def sparsegpt(
    w: torch.Tensor,
    h: torch.Tensor,
    spec: Union[NMPattern, float],
    *,
    method: Optional[str] = None,
    damp: float = 0.01,
    blocksize: int = 128,
    mask: Optional[torch.Tensor] = None,
    real: Optional[torch.Tensor] = None,
    tail: int = 0,
    name: str = "layer",
    compiled: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prune the matrix ``w`` ``(rows, cols)`` given ``h`` ``(cols, cols)``; return ``(w_new, mask)``.

    Parameters
    ----------
    w, h : torch.Tensor
        The weight matrix and ``XᵀX`` of its inputs (fp64 recommended; not modified).
    spec : NMPattern or float
        Pattern (``rows`` must be a multiple of m for transposable patterns, ``cols`` of m for
        any pattern: pass padded matrices) or a density in [0, 1].
    method : str, optional
        Transposable solver for the strips.
    damp : float
        λ as a fraction of mean(diag H).
    blocksize : int
        Columns per lazy-update block (rounded down to a multiple of m, at least m).
    mask : torch.Tensor, optional
        A fixed bool mask: only the OBS updates are computed (a refinement step).
    real : torch.Tensor, optional
        Bool matrix, False at padding entries: never kept.
    tail : int
        The last ``tail`` columns are always kept and never masked: a bias passed as the weight of
        a constant-1 input, so the OBS updates can also move the bias.
    compiled : bool
        On CPU, run the column loop of each block compiled (:mod:`nmsparse.oneshot._obs_kernels`);
        ``False``: the torch loop (the path on other devices). Both give the same result.
    """
    rows, cols = w.shape
    w, h = zero_dead_inputs(w, h)
    u, _ = inverse_cholesky(h, damp, name)
    fixed = mask is not None
    keep = mask.clone() if fixed else torch.zeros_like(w, dtype=torch.bool)
    if tail:
        keep[:, cols - tail :] = True
    masked_cols = cols - tail
    m = spec.m if isinstance(spec, NMPattern) else 1
    strip_solver = _strip_solver(spec, method) if isinstance(spec, NMPattern) else None
    step = max(m, (blocksize // m) * m)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        if not fixed and not isinstance(spec, NMPattern) and i1 < masked_cols:
            j2 = min(i2, masked_cols)
            keep[:, i1:j2] = _block_topk(w1[:, : j2 - i1].pow(2) / d1[: j2 - i1].pow(2), spec, rows, i1, j2)
        solve = not fixed and isinstance(spec, NMPattern)
        if w.device.type == "cpu" and compiled:
            _block_compiled(w1, u1, keep, real, err1, i1, i2, masked_cols, spec, solve, strip_solver)
        else:
            _block_torch(w1, u1, d1, keep, real, err1, i1, i2, masked_cols, m, solve, strip_solver)
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return w, keep


def _block_torch(w1, u1, d1, keep, real, err1, i1, i2, masked_cols, m, solve, strip_solver) -> None:
    """One lazy block, column by column, in torch (any device)."""
    for i in range(i2 - i1):
        c = i1 + i
        if solve and i % m == 0 and c < masked_cols:
            saliency = w1[:, i : i + m].pow(2) / d1[i : i + m].pow(2)
            strip = strip_solver(saliency)
            keep[:, c : c + m] = strip if real is None else strip & real[:, c : c + m]
        col = w1[:, i]
        q = torch.where(keep[:, c], col, torch.zeros((), dtype=col.dtype, device=col.device))
        e = (col - q) / d1[i]
        w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
        w1[:, i] = q  # exactly the kept value / +0.0 (no rounding residue)
        err1[:, i] = e


def _block_compiled(w1, u1, keep, real, err1, i1, i2, masked_cols, spec, solve, strip_solver) -> None:
    """The same block with the compiled column loop (CPU): the same operations in the same order."""
    from . import _obs_kernels as K

    w1n, errn = w1.numpy(), err1.numpy()  # fresh contiguous tensors: numpy views share their memory
    u1n = K.as_numpy(u1)
    kb = K.as_numpy(keep[:, i1:i2])
    rb = K.as_numpy(real[:, i1:i2]) if real is not None else np.ones(kb.shape, dtype=np.bool_)
    width, masked = i2 - i1, masked_cols - i1
    if solve and not spec.transposable:
        K.obs_block_rowwise(w1n, u1n, kb, rb, errn, spec.n, spec.m, masked)
    elif solve:  # transposable strips: the tile solver between compiled column runs
        m = spec.m
        d2 = np.diagonal(u1n) ** 2
        for i in range(0, width, m):
            if i < masked:
                saliency = torch.from_numpy((w1n[:, i : i + m] ** 2) / d2[i : i + m])
                kb[:, i : i + m] = strip_solver(saliency).numpy() & rb[:, i : i + m]
            K.obs_columns(w1n, u1n, kb, errn, i, min(i + m, width))
    else:  # a fixed mask, or a density's block-wide top-k chosen before the loop
        K.obs_columns(w1n, u1n, kb, errn, 0, width)
    keep[:, i1:i2] = torch.from_numpy(kb)


def _strip_solver(spec: NMPattern, method: Optional[str]):
    """The mask of one strip of m columns ``(rows, m)`` from its saliency: the pattern's optimal mask,
    computed by the solver kernels directly (a strip is one group per row, or one column of m×m
    tiles), without :func:`~nmsparse.masks.find_mask`'s per-call checks: a layer has cols/m strips."""
    if not spec.transposable:
        return lambda sal: topn_matrix(sal, spec.n, spec.m)
    solver = TRANSPOSABLE_METHODS[resolve_method(spec, method, "sparsegpt")]
    return lambda sal: solve_transposable_matrix(sal, spec.n, spec.m, solver)[0]


def _block_topk(saliency: torch.Tensor, density: float, rows: int, i1: int, i2: int) -> torch.Tensor:
    """Keep this block's share of a layer-wide top-k: entries [rows·i1, rows·i2) of the count."""
    return topk_mask(saliency, kept_count(rows * i2, density) - kept_count(rows * i1, density))
