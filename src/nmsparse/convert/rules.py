"""Which weights get pruned, and what happens to a weight whose shape does not fit the pattern.

Default rules (both for checkpoints and for :func:`nmsparse.convert.adaprune`):

* pruned: floating-point tensors with 2 dimensions (``nn.Linear``, ``(out, in)``) or 3-5
  dimensions (conv kernels ``(out, in, k...)``);
* left dense: 1-D tensors (biases, norm scales), integer/bool tensors (counters, masks), and
  by name embeddings (``embed``, ``wte``, ``wpe``, ``word_embeddings``, ``position_embeddings``,
  ``tok_embeddings``, ``shared.weight``) and normalisation layers (``norm``, ``ln_``, ``bn``).

``include`` and ``exclude`` follow the library's one selection rule (:mod:`nmsparse.selection`): a
regex or a list of regexes, each matched **in full** against the tensor's full name
(``"encoder.0.fc1.weight"``) and against its module name (the same without a final ``.weight`` /
``.bias``: ``"encoder.0.fc1"``). ``exclude="fc2"`` leaves ``fc2.weight`` dense but not
``fc20.weight``; write ``"fc2.*"`` for a prefix. ``include`` replaces the name rules: every
2-D..5-D float tensor it matches is pruned, embeddings included. ``exclude`` then leaves matching
names dense. A tensor whose dimensions do not fit the
pattern (``ragged``: the grouped axis, or for transposable patterns the row count, is not a
multiple of m) is handled by ``ragged``: ``"error"`` (default; nothing is written, and the
message names the layer and the fixes), ``"skip"`` (left dense, reason in the table) or ``"pad"``
(pruned with padding: a partial group keeps at most n, see :func:`nmsparse.find_mask`).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import torch

from ..errors import ShapeError
from ..layout import matrix_layout
from ..pattern import NMPattern
from ..errors import ConvertError
from ..selection import NameFilter, Patterns

__all__ = ["Selector", "RAGGED_CHOICES", "ragged_problem"]

RAGGED_CHOICES = ("error", "skip", "pad")
_EMBEDDING = re.compile(r"(^|[._])(embed\w*|wte|wpe|word_embeddings|position_embeddings|tok_embeddings|shared)([._]|$)", re.I)
_NORM = re.compile(r"(norm|(^|[._])ln(_\w*|\d*)([._]|$)|(^|[._])bn\d*([._]|$))", re.I)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Selector:
    """Decide, per tensor name and shape, whether it is pruned (``None``) or why it is left dense.

    Parameters
    ----------
    include, exclude : str or list of str, optional
        Regular expressions matched in full against the tensor name and its module name (see the
        module docstring); an invalid one raises :class:`~nmsparse.errors.PatternError` naming ``where``.
    where : str
        Caller's name for error messages.
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None, where: str = "prune"):
        self._filter = NameFilter(include, exclude, where=where)

    def skip_reason(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> Optional[str]:
        """``None`` if the tensor is to be pruned, else a short reason it stays dense."""
        nd = len(shape)
        if dtype not in _FLOATS:
            return f"dense: {str(dtype).replace('torch.', '')} tensor (not floating point)"
        if nd < 2:
            return "dense: 1-D (bias / norm / scale), left dense by default"
        if nd > 5:
            return f"dense: {nd}-D, neither a matrix nor a conv kernel"
        if any(s == 0 for s in shape):
            return "dense: empty tensor"
        module = module_name(name)
        if self._filter.include:
            if not self._filter.included(module, name):
                return "dense: not matched by --include"
        elif _EMBEDDING.search(name):
            return "dense: embedding, left dense by default (prune it with --include)"
        elif _NORM.search(name):
            return "dense: normalisation layer, left dense by default"
        if self._filter.excluded(module, name):
            return "dense: matched by --exclude"
        return None


def module_name(tensor_name: str) -> str:
    """A checkpoint tensor's module name: its name without a final ``.weight`` / ``.bias``."""
    for suffix in (".weight", ".bias"):
        if tensor_name.endswith(suffix):
            return tensor_name[: -len(suffix)]
    return tensor_name


def ragged_problem(name: str, shape: Tuple[int, ...], pattern: NMPattern) -> Optional[str]:
    """Why ``pattern`` does not fit a weight of ``shape`` (the grouped axis or, if transposable, the
    row count is not a multiple of m), or ``None`` if it fits."""
    layout = matrix_layout(shape, where=name)
    if not layout.is_ragged(pattern.m, pattern.transposable):
        return None
    if layout.group_len % pattern.m:
        return (
            f"pattern {pattern} groups it {layout.describe()} in chunks of {pattern.m}, "
            f"but it has {layout.group_len} there"
        )
    return (
        f"pattern {pattern} cuts its {layout.rows}x{layout.cols} matrix view into {pattern.m}x{pattern.m} tiles, "
        f"but {layout.rows} rows is not a multiple of {pattern.m}"
    )


def ragged_error(where: str, name: str, shape: Tuple[int, ...], problem: str, pattern: NMPattern) -> ShapeError:
    """The error for a ragged layer under ``ragged="error"``: the layer, the rule and three fixes."""
    return ShapeError(
        f"layer {name} of shape {tuple(shape)}: {problem}. Leave it dense with "
        f"--exclude '{re.escape(name)}' or --ragged skip (ragged='skip'), or prune it padded with --ragged pad "
        f"(partial groups then keep at most {pattern.n})."
    )


def check_ragged_choice(ragged: str, where: str) -> None:
    if ragged not in RAGGED_CHOICES:
        raise ConvertError(f"{where}: ragged must be one of {', '.join(RAGGED_CHOICES)}, got {ragged!r}.")

