"""Compiled inner loop of SparseGPT (numba): the column-by-column OBS updates inside one lazy block.

The torch loop in :mod:`nmsparse.oneshot.sparsegpt` launches several small tensor operations per
column; for a layer of 1536 inputs that is thousands of launches whose overhead dominates. Here the
same arithmetic runs as one compiled loop per block, and rows whose weight is kept (error 0) skip
the row update. Results equal the torch loop's bit for bit (the same float64 operations in the
same order), which the tests check.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def rowwise_strip(w1, u1, keep, real, i, n, m):
    """Row-wise n:m mask of block columns ``[i, i+m)`` from the saliency ``w² / U_jj²``: the n largest
    per row, ties to the lower index (as :func:`nmsparse.masks.rowwise.topn_matrix`), never a padding
    entry (``real`` False)."""
    rows = w1.shape[0]
    for r in range(rows):
        for j in range(m):
            keep[r, i + j] = False
        for _ in range(n):
            best = -1
            best_v = -1.0
            for j in range(m):
                if not keep[r, i + j]:
                    d = u1[i + j, i + j]
                    v = (w1[r, i + j] * w1[r, i + j]) / (d * d)
                    if v > best_v:
                        best_v = v
                        best = j
            keep[r, i + best] = True
        for j in range(m):
            keep[r, i + j] = keep[r, i + j] and real[r, i + j]


@njit(cache=True, nogil=True)
def obs_columns(w1, u1, keep, err1, a, b):
    """OBS updates of block columns ``[a, b)`` in order: prune column i where ``keep`` is False, and
    give the columns right of i inside the block the error ``e · U[i, i:]`` (Sec. 3.2)."""
    rows, width = w1.shape
    for i in range(a, b):
        d = u1[i, i]
        for r in range(rows):
            x = w1[r, i]
            q = x if keep[r, i] else 0.0
            e = (x - q) / d
            if e != 0.0:
                for j in range(i + 1, width):
                    w1[r, j] -= e * u1[i, j]
            w1[r, i] = q
            err1[r, i] = e


@njit(cache=True, nogil=True)
def obs_block_rowwise(w1, u1, keep, real, err1, n, m, masked):
    """One lazy block of row-wise SparseGPT: each strip of m columns (below column ``masked``) gets its
    mask from the current saliency, then its OBS updates."""
    width = w1.shape[1]
    for i in range(0, width, m):
        if i < masked:
            rowwise_strip(w1, u1, keep, real, i, n, m)
        obs_columns(w1, u1, keep, err1, i, min(i + m, width))


def as_numpy(t):
    return np.ascontiguousarray(t.numpy())
