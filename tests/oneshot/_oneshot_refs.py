"""Slow, obviously-correct references for the one-shot pruning tests (numpy, float64)."""

from __future__ import annotations

import numpy as np


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    return h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])


def sparsegpt_fixed_mask(w: np.ndarray, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """SparseGPT's update written the obvious way: walk the columns; where a row prunes column j,
    set it to 0 and give the columns right of j the least-squares optimal correction (columns <= j
    frozen): δ_{>j} = H_{>j,>j}⁻¹ H_{>j,j} w_j."""
    w = w.copy()
    cols = w.shape[1]
    for j in range(cols):
        rows = np.nonzero(~mask[:, j])[0]
        if len(rows) == 0:
            continue
        wj = w[rows, j].copy()
        w[rows, j] = 0.0
        if j + 1 < cols:
            rest = slice(j + 1, cols)
            direction = np.linalg.solve(h[rest, rest], h[rest, j])
            w[rows, rest] += wj[:, None] * direction[None, :]
    return w


def lstsq_rows(x: np.ndarray, w0: np.ndarray, b0, mask: np.ndarray):
    """Per row, the kept weights (and bias) minimising ||[X 1] θ - (X w0 + b0)||² (numpy lstsq)."""
    n = x.shape[0]
    xa = np.concatenate([x, np.ones((n, 1))], 1) if b0 is not None else x
    w = np.zeros_like(w0)
    b = None if b0 is None else np.zeros_like(b0)
    for r in range(w0.shape[0]):
        target = x @ w0[r] + (b0[r] if b0 is not None else 0.0)
        cols = list(np.nonzero(mask[r])[0]) + ([x.shape[1]] if b0 is not None else [])
        sol = np.linalg.lstsq(xa[:, cols], target, rcond=None)[0]
        k = int(mask[r].sum())
        w[r, np.nonzero(mask[r])[0]] = sol[:k]
        if b0 is not None:
            b[r] = sol[k]
    return w, b


def output_error(x: np.ndarray, w0, b0, w, b) -> float:
    """Relative output error ||(X W'ᵀ + b') - (X W0ᵀ + b0)||² / ||X W0ᵀ + b0||²."""
    y0 = x @ w0.T + (0.0 if b0 is None else b0)
    y = x @ w.T + (0.0 if b is None else b)
    return float(((y - y0) ** 2).sum() / (y0 ** 2).sum())
