"""``reattach_masks_``: static masks from the zeros of a pruned model, for fine-tuning after a reload.

``prune_`` returns (and ``nmsparse prune`` writes) plain weights with +0.0 where pruned, so the
model saves and loads with the ecosystem's own calls. To fine-tune it without losing the pattern,
the masks come back from those zeros: a weight whose non-zeros fit the pattern (at most n per
group, or per row and column of each m×m tile) gets a static :class:`~nmsparse.nn.NMMask` that
keeps exactly its non-zeros, with a masked gradient (pruned weights stay +0.0).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..errors import MaskError, ShapeError
from ..diversity import kept_count
from ..selection import Patterns
from .attach import attach_mask_, parse_pattern
from .select import find_candidates, split

__all__ = ["reattach_masks_"]


def reattach_masks_(
    model: nn.Module, pattern, *, include: Patterns = None, exclude: Patterns = None, gradient: str = "masked",
    skipped: Optional[List[Tuple[str, str]]] = None,
) -> nn.Module:
    """Attach a static mask keeping exactly the non-zeros of every weight that fits ``pattern``; in place.

    Parameters
    ----------
    model : nn.Module
        A pruned model, e.g. ``from_pretrained`` of a folder written by ``nmsparse prune`` or by
        ``save_pretrained`` after ``prune_``.
    pattern : str, NMPattern or float
        The pattern it was pruned to (``"2:4"``, ``"2:4T"``, ...; n KEPT per group of m), or a density.
    include, exclude : str or list of str, optional
        The library's one selection rule (full-match regexes on module and parameter names), as in
        :func:`nmsparse.sparsify_`.
    gradient : {"masked", "ste", "srste"}
        How the pruned weights get gradients; ``"masked"`` keeps them +0.0.
    skipped : list, optional
        Filled with ``(weight name, reason)`` for the weights left without a mask (e.g. the dense
        embeddings and LM head of a pruned LLM).

    Raises
    ------
    MaskError
        A weight you named in ``include=`` whose non-zeros do not fit the pattern.
    ShapeError
        No weight of the model fits.

    Examples
    --------
    >>> import torch, nmsparse as nms
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    >>> _ = nms.prune_(model, "2:4")                 # plain weights, +0.0 where pruned
    >>> _ = nms.nn.reattach_masks_(model, "2:4")     # static masks from those zeros
    >>> bool(model[0].parametrizations.weight[0].mask.sum() == 32)
    True
    """
    where = "reattach_masks_"
    spec = parse_pattern(pattern, where)
    chosen, rejected = split(find_candidates(model, include, exclude), spec)
    out = [(c.name, c.reason) for c in rejected]
    attached = 0
    for cand in chosen:
        weight = cand.module._parameters.get(cand.param_name)
        if weight is None:  # parametrized (a mask already): its zeros are the mask's business
            out.append((cand.name, "already carries a mask"))
            continue
        mask = weight.detach() != 0
        if isinstance(spec, float) and int(mask.sum()) > kept_count(mask.numel(), spec):
            fits = False
        else:
            try:  # attach_mask_ checks the mask along the layer's own grouped axis before attaching anything
                attach_mask_(cand.module, cand.param_name, mask, spec, gradient=gradient, update="static", name=cand.name)
                fits = True
            except MaskError:
                fits = False
        if not fits:
            why = f"its non-zeros do not fit {spec} (not pruned to it)"
            if cand.explicit:
                raise MaskError(f"{where}: layer {cand.name}: {why}; prune it first (nms.prune_) or drop it from include=.")
            out.append((cand.name, why))
            continue
        attached += 1
    if skipped is not None:
        skipped[:] = out
    if not attached:
        why = "; ".join(f"{n}: {r}" for n, r in out[:3]) or "no nn.Linear / nn.Conv / Conv1D weight"
        raise ShapeError(f"{where}: no weight of the model fits {spec} ({why}). Check the pattern it was pruned to, and include=/exclude=.")
    return model
