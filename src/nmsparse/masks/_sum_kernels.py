"""Deterministic float64 sums of scores (all, and kept) in one compiled pass.

torch's float64 sum of a float32 tensor first makes a float64 copy of it (twice the weight's
memory) and its reduction order may depend on the thread count. Here each fixed-size block is
summed by one thread and the block sums are added in order, so the result is the same on any
number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_BLOCK = 1 << 16


# Reassociation lets LLVM vectorise each block's sum; blocks are fixed, so the result still does
# not depend on the thread count.
@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def total_and_kept(scores, mask, absolute):
    """(sum of scores, sum of scores where mask) in float64, for flat arrays of equal length.

    With ``absolute`` the scores are ``|scores|``.
    """
    size = scores.shape[0]
    blocks = (size + _BLOCK - 1) // _BLOCK
    totals = np.zeros(blocks)
    kept = np.zeros(blocks)
    for b in prange(blocks):
        t = 0.0
        k = 0.0
        for i in range(b * _BLOCK, min(size, (b + 1) * _BLOCK)):
            v = np.float64(scores[i])
            if absolute:
                v = abs(v)
            t += v
            k += v if mask[i] else 0.0
        totals[b] = t
        kept[b] = k
    t = 0.0
    k = 0.0
    for b in range(blocks):
        t += totals[b]
        k += kept[b]
    return t, k
