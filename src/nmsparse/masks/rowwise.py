"""Row-wise N:M: keep the n largest scores in every group of m along the grouped axis.

Top-n per group is optimal for the row-wise pattern: groups are independent and the objective is
a sum. Ties go to the lower index inside the group (deterministic on every platform).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layout import to_groups


def topn_matrix(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of a ``(R, C)`` score matrix (C a multiple of m): n kept per group of m.

    CPU tensors use the compiled kernel; other devices use a stable sort in torch. Both give the
    same mask: the n largest of each group, ties to the lower index.
    """
    if n == m:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if scores.device.type == "cpu":
        from ._rowwise_kernels import topn_groups

        arr = np.ascontiguousarray(scores.numpy())
        return torch.from_numpy(topn_groups(arr, m, n))
    return topn_matrix_torch(scores, n, m)


def topn_matrix_torch(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Pure-torch top-n per group (any device). Stable descending sort keeps ties in index order."""
    groups = to_groups(scores, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order, True)
    return mask.reshape(scores.shape)
