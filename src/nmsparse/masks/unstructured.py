"""Unstructured masks: keep the top-k scores of the whole tensor at a given density."""

from __future__ import annotations

from typing import Optional

import torch

from ..diversity import kept_count
from ..errors import guard_resources
from ..pattern import _density_of_text, check_density
from ._inputs import prepare_scores
from .topk import topk_mask


@guard_resources("unstructured_mask")
def unstructured_mask(weight: torch.Tensor, density: float, *, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Keep the ``k = floor(density * numel + 1/2)`` largest scores of the whole tensor.

    Parameters
    ----------
    weight : torch.Tensor
        Any shape; ``|weight|`` is the default score.
    density : float or str
        Fraction kept, 0 <= density <= 1 (``0.5``, or text such as ``"50%"``); anything else is a
        :class:`~nmsparse.errors.PatternError`, as for every density argument of the library.
    scores : torch.Tensor, optional
        Non-negative scores of the weight's shape.

    Returns
    -------
    torch.Tensor
        Bool mask of the weight's shape. Ties go to the lower flat (row-major) index.

    Examples
    --------
    >>> w = torch.tensor([[0.1, -3.0], [2.0, 0.5]])
    >>> unstructured_mask(w, 0.5)
    tensor([[False,  True],
            [ True, False]])
    """
    where = "unstructured_mask"
    density = check_density(_density_of_text(density) if isinstance(density, str) else density, where,
                            shown=repr(density) if isinstance(density, str) else None)
    s = prepare_scores(weight, scores, where)
    return topk_mask(s, kept_count(s.numel(), density))
