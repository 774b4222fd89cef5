"""Shared argument handling of the approximate transposable tile kernels (greedy, refine)."""

from __future__ import annotations

import numpy as np


def prepare_tiles(scores, n):
    a = np.asarray(scores)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"scores must have shape (T, m, m), got {a.shape}")
    m = a.shape[1]
    if not (1 <= int(n) <= m):
        raise ValueError(f"n must satisfy 1 <= n <= m = {m}, got n = {n}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        a = a.astype(np.float64)  # exact for every integer and float type numpy has up to 32 bits
    return np.ascontiguousarray(a), int(n), m


def lane_chunk(m):
    return max(1, 4096 // (m * m))
