"""The library's one stable top-k: keep the k largest scores of a tensor, ties to the lower index.

Every unstructured mask (``unstructured_mask``, ``nn``'s density masks, SparseGPT's blocks at a
density, Sparse-IFT's random masks) is chosen here, so they all follow the one stated rule: the
same scores give the same mask on every run and platform, and equal scores go to the lower flat
(row-major) index.
"""

from __future__ import annotations

import torch

__all__ = ["topk_mask"]


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape keeping its ``k`` largest entries; ties to the lower flat index.

    Parameters
    ----------
    scores : torch.Tensor
        Any shape, finite (callers check their inputs); compared as given (no ``abs``).
    k : int
        How many to keep, ``0 <= k <= scores.numel()``.

    Examples
    --------
    >>> topk_mask(torch.tensor([[1.0, 2.0], [2.0, 0.0]]), 2)
    tensor([[False,  True],
            [ True, False]])
    """
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        # A stable descending sort keeps equal scores in index order: the lower index comes first.
        mask[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return mask.reshape(scores.shape)
