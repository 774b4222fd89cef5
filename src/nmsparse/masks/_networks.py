"""Sorting-network comparators shared by the compiled tile solvers (exact and refine).

Order statistics of m values (the n-th and (n+1)-th largest) from a pruned Batcher odd-even
merge network: applied to all rows (or columns) of a tile at once, its inner loop is a plain
vectorised min/max over m lanes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def batcher_pairs(size: int) -> list[tuple[int, int]]:
    """Comparators (i < j, min to i) of Batcher's odd-even merge sort; ``size`` a power of 2."""
    out = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        out.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return out


@lru_cache(maxsize=None)
def selection_network(n: int, m: int) -> np.ndarray:
    """Comparators that place the n-th and (n+1)-th largest of m values at m-n and m-n-1.

    A Batcher network for the next power of two, with comparators on padding positions dropped
    (padding is +inf at the top end, so they are no-ops), pruned to the comparators that the two
    output positions depend on. Shape (K, 2), ascending order.
    """
    size = 1
    while size < m:
        size *= 2
    net = [(a, b) for a, b in batcher_pairs(size) if b < m]
    need = {m - n - 1, m - n}
    kept = []
    for a, b in reversed(net):
        if a in need or b in need:
            kept.append((a, b))
            need |= {a, b}
    return np.array(kept[::-1], dtype=np.int64).reshape(-1, 2)
