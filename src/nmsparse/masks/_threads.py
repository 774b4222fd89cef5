"""Run the compiled kernels single-threaded on small inputs.

A parallel numba launch costs little on an idle machine, but next to PyTorch's own OpenMP pool
(e.g. refreshing masks inside a training loop) waking a second thread pool can cost tens of
milliseconds per launch, far more than the work on a layer of a few thousand weights. Below
``SERIAL_BELOW`` entries the kernels therefore run on one thread; results do not depend on the
thread count (every kernel is deterministic by construction).
"""

from __future__ import annotations

from contextlib import contextmanager

SERIAL_BELOW = 1 << 16


@contextmanager
def kernel_threads(entries: int, on_cpu: bool = True):
    if not on_cpu or entries >= SERIAL_BELOW:
        yield
        return
    import numba

    previous = numba.get_num_threads()
    if previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
