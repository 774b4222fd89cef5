"""Compiled, thread-parallel gather of m x m tiles from a matrix band and scatter of tile masks back.

torch's copy of the permuted (R/m, m, C/m, m) view moves m contiguous elements at a time and
is several times slower than these loops for small m.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def gather_tiles(band, m, absolute):
    """(rows, cols) band, both multiples of m -> (rows/m * cols/m, m, m) tiles, row-major over tiles.

    With ``absolute`` the tiles hold ``|band|`` (fused here to spare a weight-sized pass).
    """
    rows, cols = band.shape
    tr, tc = rows // m, cols // m
    out = np.empty((tr * tc, m, m), dtype=band.dtype)
    for t in prange(tr * tc):
        r0 = (t // tc) * m
        c0 = (t % tc) * m
        for i in range(m):
            for j in range(m):
                v = band[r0 + i, c0 + j]
                out[t, i, j] = abs(v) if absolute else v
    return out


@njit(parallel=True, cache=True, nogil=True)
def scatter_tiles(tiles, out):
    """Write (T, m, m) tiles into the (rows, cols) array ``out`` (inverse of :func:`gather_tiles`)."""
    rows, cols = out.shape
    m = tiles.shape[1]
    tc = cols // m
    for t in prange(tiles.shape[0]):
        r0 = (t // tc) * m
        c0 = (t % tc) * m
        for i in range(m):
            for j in range(m):
                out[r0 + i, c0 + j] = tiles[t, i, j]
