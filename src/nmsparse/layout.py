"""Weight tensor <-> 2-D matrix, groups and m x m tiles. The one place that decides where groups run.

Conventions (DESIGN.md, "Where groups run"):

* A 2-D weight ``(out, in)`` (``nn.Linear``, ``y = x W^T``) is grouped along ``in``, the reduction
  dimension of the forward product.
* A conv weight ``(out, in, k1, ..., kd)`` is viewed as its implicit-GEMM matrix
  ``(out, k1*...*kd*in)`` with the input channel innermost, so groups run along input channels at
  each kernel position (they never straddle two kernel positions).
* Hugging Face's ``Conv1D`` (GPT-2 family) stores its weight ``(in, out)`` (``y = x W + b``), so
  its groups run along ``in`` = dim 0 (:func:`group_dim_of`).
* Any other tensor is grouped along an explicit ``dim``; every other axis becomes a matrix row.
  A 1-D tensor is one row.
* Transposable tiles are true m x m sub-blocks of that matrix: rows ``[r, r+m)`` x columns
  ``[c, c+m)``.
* Ragged edges are padded for solving (the grouped axis per kernel position, the rows as a whole)
  and cropped afterwards.
* Padding is bounded. Each padded axis grows by at most m - 1, but a pattern whose m dwarfs the
  weight would still multiply its size (``"1:100000T"`` on an 8 x 8 weight is a 10^10-entry
  matrix). The padded matrix may hold at most ``MAX_PAD_FACTOR`` times the weight's entries,
  unless it stays under ``PAD_BUDGET`` entries (small weights may pad freely); beyond that the
  layout raises :class:`ShapeError` before allocating anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import ShapeError

__all__ = ["MatrixLayout", "matrix_layout", "to_groups", "to_tiles", "from_tiles", "MAX_PAD_FACTOR", "PAD_BUDGET",
           "is_hf_conv1d", "group_dim_of"]

MAX_PAD_FACTOR = 8
PAD_BUDGET = 1 << 24  # entries; 128 MiB as float64 scores


def is_hf_conv1d(module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 family): a linear layer whose weight is stored ``(in, out)``.

    Duck-typed (class name, ``nf`` and a weight) so the library never imports transformers.
    """
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def group_dim_of(module, param_name: str = "weight") -> Optional[int]:
    """The axis a module's parameter is grouped along: ``0`` for an HF ``Conv1D`` weight (its
    input axis), ``None`` (the default layout above) for everything else."""
    return 0 if param_name == "weight" and is_hf_conv1d(module) else None


@dataclass(frozen=True)
class MatrixLayout:
    """How a weight of ``shape`` maps onto the 2-D matrix whose rows are grouped.

    The weight is permuted by ``perm`` so that the grouped axis comes last; the first
    ``row_axes`` permuted axes are flattened into matrix rows and the rest into columns.

    Attributes
    ----------
    shape : tuple of int
        The original weight shape.
    perm : tuple of int
        Permutation of the weight's axes; the grouped axis is ``perm[-1]``.
    row_axes : int
        Number of leading permuted axes that form the matrix rows.
    """

    shape: tuple
    perm: tuple
    row_axes: int
    where: str = field(default="layout", compare=False)

    @property
    def permuted_shape(self) -> tuple:
        return tuple(self.shape[a] for a in self.perm)

    @property
    def group_dim(self) -> int:
        """Axis of the original weight that groups run along."""
        return self.perm[-1]

    @property
    def rows(self) -> int:
        return math.prod(self.permuted_shape[: self.row_axes])

    @property
    def cols(self) -> int:
        return math.prod(self.permuted_shape[self.row_axes :])

    @property
    def group_len(self) -> int:
        """Length of the grouped axis (the one chunked into groups of m)."""
        return self.permuted_shape[-1]

    def describe(self) -> str:
        """Human-readable account of where groups run, for error messages."""
        nd = len(self.shape)
        if nd == 2 and self.perm == (0, 1):
            return "along the last (input) dimension"
        if nd >= 3 and self.row_axes == 1 and self.perm[-1] == 1 and self.perm[0] == 0:
            return "along input channels (dim 1) at each kernel position"
        if nd == 1:
            return "along the only dimension"
        return f"along dim {self.group_dim}"

    def padded_shape(self, m: int, tiles: bool) -> tuple:
        """Matrix shape after padding the grouped axis (and, for tiles, the rows) to multiples of m."""
        lead = self.permuted_shape[self.row_axes : -1]
        cols = math.prod(lead) * _round_up(self.group_len, m)
        rows = _round_up(self.rows, m) if tiles else self.rows
        return rows, cols

    def is_ragged(self, m: int, tiles: bool) -> bool:
        """True if solving needs padding: the grouped axis (or, for tiles, the rows) is not a multiple of m."""
        return self.group_len % m != 0 or (tiles and self.rows % m != 0)

    def padding_problem(self, m: int, tiles: bool) -> Optional[str]:
        """Why padding to multiples of m would be unreasonable (see the module docstring), or ``None``."""
        rows, cols = self.padded_shape(m, tiles)
        padded, entries = rows * cols, math.prod(self.shape)
        if padded <= PAD_BUDGET or padded <= MAX_PAD_FACTOR * entries:
            return None
        what = f"{m}x{m} tiles" if tiles else f"groups of {m}"
        fits = min(self.group_len, self.rows) if tiles else self.group_len
        return (
            f"padding the {self.rows}x{self.cols} matrix view of a weight of shape {self.shape} to {what} "
            f"makes it {rows}x{cols} ({padded:.3g} entries), more than {MAX_PAD_FACTOR}x the weight's {entries} "
            f"entries and more than the {PAD_BUDGET} entries small weights may pad to; use a pattern whose m "
            f"fits the weight (m <= {fits} here), or leave this weight dense"
        )

    def check_padding(self, m: int, tiles: bool) -> None:
        """Raise :class:`ShapeError` if padding to multiples of m is unreasonable; allocates nothing."""
        problem = self.padding_problem(m, tiles)
        if problem is not None:
            raise ShapeError(f"{self.where}: {problem}.")

    def to_matrix(self, t: torch.Tensor, m: int = 1, tiles: bool = False, fill: float = 0.0) -> torch.Tensor:
        """Permute/reshape ``t`` (of ``shape``) into the padded matrix, filling padding with ``fill``.

        Returns a view when no permutation copy and no padding are needed. Raises
        :class:`ShapeError` before allocating if the padding would be unreasonable
        (:meth:`padding_problem`).
        """
        if tuple(t.shape) != self.shape:
            raise ShapeError(f"layout expects a tensor of shape {self.shape}, got {tuple(t.shape)}")
        self.check_padding(m, tiles)
        p = t.permute(self.perm) if self.perm != tuple(range(len(self.shape))) else t
        extra = _round_up(self.group_len, m) - self.group_len
        if extra:
            p = F.pad(p, (0, extra), value=fill) if p.dtype != torch.bool else _pad_last_bool(p, extra, bool(fill))
        mat = p.reshape(self.rows, -1)
        if tiles:
            extra_rows = _round_up(self.rows, m) - self.rows
            if extra_rows:
                pad = torch.full((extra_rows, mat.shape[1]), fill, dtype=mat.dtype, device=mat.device)
                mat = torch.cat([mat, pad], dim=0)
        return mat

    def from_matrix(self, mat: torch.Tensor, m: int = 1) -> torch.Tensor:
        """Inverse of :meth:`to_matrix`: crop the padding and restore the original shape."""
        pshape = self.permuted_shape
        padded_group = _round_up(self.group_len, m)
        p = mat[: self.rows].reshape(*pshape[:-1], padded_group)[..., : self.group_len]
        inverse = [0] * len(self.perm)
        for i, a in enumerate(self.perm):
            inverse[a] = i
        return p.permute(inverse).contiguous() if self.perm != tuple(range(len(self.perm))) else p.contiguous()

    def original_index(self, row: int, col: int, m: int = 1) -> tuple:
        """Index into the original weight of matrix entry (row, col) of the padded matrix (None if padding)."""
        pshape = list(self.permuted_shape)
        pshape[-1] = _round_up(self.group_len, m)
        if row >= self.rows:
            return None
        flat = row * math.prod(pshape[self.row_axes :]) + col
        idx = []
        for size in reversed(pshape):
            idx.append(flat % size)
            flat //= size
        idx.reverse()
        if idx[-1] >= self.group_len:
            return None
        original = [0] * len(self.perm)
        for i, a in enumerate(self.perm):
            original[a] = idx[i]
        return tuple(original)


def matrix_layout(shape: Sequence[int], dim: Optional[int] = None, *, where: str = "layout") -> MatrixLayout:
    """Choose the matrix view of a weight of ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Weight shape; every size must be >= 1.
    dim : int, optional
        Axis to group along. ``None`` picks the convention: the last axis of a 1-D or 2-D weight,
        the input channel (axis 1) of a conv weight with 3+ axes, viewed as ``(out, k...*in)``.
        An explicit ``dim`` groups along that axis and flattens every other axis into rows.
    where : str
        Caller's name, used in error messages.

    Examples
    --------
    >>> matrix_layout((64, 3, 3, 3)).padded_shape(4, tiles=False)   # conv: in=3 padded to 4 per position
    (64, 36)
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if nd == 0:
        raise ShapeError(f"{where}: a 0-d tensor has no dimension to group along; pass a tensor with at least 1 dimension.")
    if any(s < 1 for s in shape):
        raise ShapeError(f"{where}: tensor of shape {shape} is empty; every dimension must be at least 1.")
    if dim is None:
        if nd == 1:
            return MatrixLayout(shape, (0,), 0, where)
        if nd == 2:
            return MatrixLayout(shape, (0, 1), 1, where)
        # Conv (out, in, k1..kd) -> (out, k1..kd, in): implicit GEMM with the input channel innermost.
        return MatrixLayout(shape, (0, *range(2, nd), 1), 1, where)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ShapeError(f"{where}: dim must be an int or None, got {dim!r}.")
    if not -nd <= dim < nd:
        raise ShapeError(f"{where}: dim={dim} is out of range for a tensor of shape {shape} ({nd} dimensions).")
    dim %= nd
    others = tuple(a for a in range(nd) if a != dim)
    return MatrixLayout(shape, (*others, dim), len(others), where)


def to_groups(matrix: torch.Tensor, m: int) -> torch.Tensor:
    """View a ``(R, C)`` matrix (C a multiple of m) as ``(R, C // m, m)`` groups."""
    return matrix.reshape(matrix.shape[0], matrix.shape[1] // m, m)


def to_tiles(matrix: torch.Tensor, m: int) -> torch.Tensor:
    """Cut a ``(R, C)`` matrix (both multiples of m) into ``(R//m * C//m, m, m)`` tiles, row-major over tiles."""
    r, c = matrix.shape
    return matrix.reshape(r // m, m, c // m, m).transpose(1, 2).reshape(-1, m, m)


def from_tiles(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`."""
    m = tiles.shape[-1]
    return tiles.reshape(rows // m, cols // m, m, m).transpose(1, 2).reshape(rows, cols)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad_last_bool(t: torch.Tensor, extra: int, value: bool) -> torch.Tensor:
    pad = torch.full((*t.shape[:-1], extra), value, dtype=torch.bool, device=t.device)
    return torch.cat([t, pad], dim=-1)
