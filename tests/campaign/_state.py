"""Snapshot of the global state a library must not change: the campaign checks it around every case.

DESIGN.md: "The library never changes global state it does not own (torch/numba thread counts,
default dtype, RNG state, warning filters) and restores what it touches." ``conftest.py`` takes a
:func:`snapshot` before and after each campaign case and fails the case on any difference
(:func:`changes`). Cases therefore build their inputs with their own ``torch.Generator``, never
the global RNG.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Dict, List

import numpy as np
import torch

# torch imports torch._dynamo (and with it sympy, which adds a "once" warning filter) lazily, the
# first time e.g. an optimizer is built. That is torch's one-time import, not a change made by the
# call under test, so it is done here, before any snapshot.
import torch._dynamo  # noqa: E402,F401

# Likewise scikit-learn (loaded by the digits example behind `nmsparse demo`) adds warning filters
# and draws from Python's `random` when first imported.
import sklearn.datasets  # noqa: E402,F401


def snapshot() -> Dict[str, object]:
    """Every piece of global state the campaign watches, as comparable values."""
    import numba

    state = {
        "torch.get_num_threads": torch.get_num_threads(),
        "numba.get_num_threads": numba.get_num_threads(),
        "torch.get_default_dtype": torch.get_default_dtype(),
        "torch.is_grad_enabled": torch.is_grad_enabled(),
        "torch.are_deterministic_algorithms_enabled": torch.are_deterministic_algorithms_enabled(),
        "torch RNG state": torch.get_rng_state(),
        "numpy RNG state": np.random.get_state(),
        "random state": random.getstate(),
        "warnings.filters": list(warnings.filters),
        "cwd": os.getcwd(),
    }
    return state


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple) and a and isinstance(a[0], str) and a[0] == "MT19937":  # numpy RNG state
        return all(np.array_equal(x, y) for x, y in zip(a, b))
    return a == b


def changes(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    """Names of the entries that differ between two snapshots."""
    return [key for key in before if not _equal(before[key], after[key])]
