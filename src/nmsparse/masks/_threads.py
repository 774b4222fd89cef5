"""Run the compiled kernels without touching the caller's thread settings.

Two concerns meet here:

* Small inputs run on one thread. A parallel numba launch costs little on an idle machine, but
  next to PyTorch's own OpenMP pool (e.g. refreshing masks inside a training loop) waking a second
  thread pool can cost tens of milliseconds per launch, far more than the work on a layer of a few
  thousand weights. Below ``SERIAL_BELOW`` entries the kernels therefore run on one thread.
* Global state is the caller's. numba's OpenMP threading layer shares the OpenMP runtime with
  PyTorch, so a parallel launch can reset ``torch.get_num_threads()`` (a user's
  ``torch.set_num_threads(1)`` came back as 2). Every launch therefore snapshots both thread
  counts and restores them in ``finally``; the kernels also use no more threads than torch is
  allowed, so a caller who limited torch to one thread is not overridden by a second pool.

Results never depend on the thread count (every kernel is deterministic by construction).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

SERIAL_BELOW = 1 << 16


@contextmanager
def kernel_threads(entries: int, on_cpu: bool = True):
    """Context for one batch of kernel launches on ``entries`` weights; restores every thread count."""
    torch_threads = torch.get_num_threads()
    if not on_cpu:
        try:
            yield
        finally:
            _restore_torch(torch_threads)
        return
    import numba

    previous = numba.get_num_threads()
    wanted = 1 if entries < SERIAL_BELOW else max(1, min(previous, torch_threads))
    try:
        if wanted != previous:
            numba.set_num_threads(wanted)
        yield
    finally:
        if numba.get_num_threads() != previous:
            numba.set_num_threads(previous)
        _restore_torch(torch_threads)


def _restore_torch(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
