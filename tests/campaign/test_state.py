"""The global-state check itself: every watched change is detected, and restoring it clears it."""

import random
import warnings

import numba
import numpy as np
import torch

from _state import changes, snapshot


def _detects(change, restore, key):
    before = snapshot()
    change()
    try:
        assert key in changes(before, snapshot())
    finally:
        restore()
    assert changes(before, snapshot()) == []


def test_every_watched_change_is_detected():
    threads, nthreads = torch.get_num_threads(), numba.get_num_threads()
    _detects(lambda: torch.set_num_threads(threads + 1), lambda: torch.set_num_threads(threads), "torch.get_num_threads")
    if nthreads > 1:
        _detects(lambda: numba.set_num_threads(1), lambda: numba.set_num_threads(nthreads), "numba.get_num_threads")
    dtype = torch.get_default_dtype()
    _detects(lambda: torch.set_default_dtype(torch.float64), lambda: torch.set_default_dtype(dtype), "torch.get_default_dtype")
    rng = torch.get_rng_state()
    _detects(lambda: torch.randn(1), lambda: torch.set_rng_state(rng), "torch RNG state")
    np_rng = np.random.get_state()
    _detects(lambda: np.random.rand(), lambda: np.random.set_state(np_rng), "numpy RNG state")
    py_rng = random.getstate()
    _detects(lambda: random.random(), lambda: random.setstate(py_rng), "random state")
    filters = list(warnings.filters)
    _detects(lambda: warnings.simplefilter("ignore"), lambda: warnings.filters.__setitem__(slice(None), filters), "warnings.filters")
    _detects(lambda: torch.set_grad_enabled(False), lambda: torch.set_grad_enabled(True), "torch.is_grad_enabled")
