"""Driver for transposable n:mT solvers: padding, streaming over bands of tiles, bookkeeping.

Each solver works on a batch of m x m score tiles; this module feeds it bands of tile rows of
the padded score matrix so that memory stays bounded (a band is ~4M entries) and no per-tile
Python object is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import ScoreError
from ..layout import from_tiles, to_tiles

# A CPU solver maps float32/float64 tiles (T, m, m) and n to (bool mask (T, m, m), bool short (T,) or None).
CpuSolver = Callable[[np.ndarray, int], Tuple[np.ndarray, Optional[np.ndarray]]]
TorchSolver = Callable[[torch.Tensor, int], Tuple[torch.Tensor, Optional[torch.Tensor]]]

_BAND_ENTRIES = 1 << 22


@dataclass(frozen=True)
class TransposableMethod:
    """A named transposable solver. ``torch_solver`` (if any) serves non-CPU devices."""

    name: str
    optimal: bool
    summary: str
    cpu_solver: Callable[[], CpuSolver]
    torch_solver: Optional[Callable[[], TorchSolver]] = None


def padding_score(scores: torch.Tensor, m: int) -> float:
    """Score for padding entries: below minus any tile's total real score.

    Every padded row/column must still keep n inside the padded tile; this makes every solver
    prefer real entries first (keeping as many real entries as the partial tile allows), so the
    cropped mask keeps at most n per real row/column.
    """
    top = float(scores.max()) if scores.numel() else 0.0
    pad = -(top * m * m + 1.0)
    if not np.isfinite(pad) or top * m * m * 4 > np.finfo(np.float64).max:
        raise ScoreError(f"scores up to {top:g} are too large to pad a ragged matrix safely; rescale them.")
    return pad


def solve_transposable_matrix(
    matrix: torch.Tensor, n: int, m: int, method: TransposableMethod, absolute: bool = False
) -> Tuple[torch.Tensor, Dict[str, int]]:
    """Solve every m x m tile of a padded ``(R, C)`` score matrix (R, C multiples of m).

    With ``absolute`` the scores are ``|matrix|`` (taken tile by tile, never materialised).

    Returns the bool mask matrix and ``{"tiles": T, "short_tiles": S}``.
    """
    rows, cols = matrix.shape
    device = matrix.device
    tiles_total = (rows // m) * (cols // m)
    if n == m:  # dense: every entry kept, no solver needed
        return torch.ones((rows, cols), dtype=torch.bool, device=device), {"tiles": tiles_total, "short_tiles": 0}
    use_torch = device.type != "cpu" and method.torch_solver is not None
    if device.type != "cpu" and not use_torch:
        matrix = matrix.cpu()
    out = torch.empty((rows, cols), dtype=torch.bool, device=matrix.device)
    band_rows = max(m, (_BAND_ENTRIES // max(cols, 1)) // m * m)
    short_total = 0
    solver = method.torch_solver() if use_torch else method.cpu_solver()
    if not use_torch:
        from ._tile_kernels import gather_tiles, scatter_tiles
    for r0 in range(0, rows, band_rows):
        band = matrix[r0 : r0 + band_rows]
        if use_torch:
            tiles = to_tiles(band, m)
            mask_tiles, short = solver(tiles.abs() if absolute else tiles, n)
            out[r0 : r0 + band.shape[0]] = from_tiles(mask_tiles, band.shape[0], cols)
        else:
            # Kernels take float32 or float64 tiles and compute in float64 internally.
            mask_np, short = solver(gather_tiles(np.ascontiguousarray(band.numpy()), m, absolute), n)
            scatter_tiles(mask_np, out[r0 : r0 + band.shape[0]].numpy())
        if short is not None:
            short_total += int(short.sum())
    return out.to(device), {"tiles": tiles_total, "short_tiles": short_total}
