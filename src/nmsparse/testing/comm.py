"""Count the bytes a process contributes to collectives (tests and benchmarks of distributed code).

:class:`CollectiveBytes` is a ``TorchDispatchMode``: every c10d collective (``dist.all_gather_single``
and friends) and every functional collective (what ``DTensor.full_tensor()`` uses) goes through
the dispatcher, where it sees the op and its tensors, including the collectives a DTensor op
issues internally (an indexing op that redistributes a shard, say). It records, per op, the bytes of this
rank's *input* (its contribution); an all-gather over k ranks then moves k times that into every
rank. Waits and autograd wrappers are not collectives and are not counted.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CollectiveBytes"]

_NOT_COLLECTIVES = ("wait_tensor", "_wrap_tensor_autograd")


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class CollectiveBytes(TorchDispatchMode):
    """Context manager: ``bytes`` (total), ``calls`` and ``by_op`` (Counter of bytes per op name).

    Examples
    --------
    >>> with CollectiveBytes() as comm:            # doctest: +SKIP
    ...     dist.all_gather_single(out, torch.zeros(8, dtype=torch.uint8))
    >>> comm.bytes, comm.calls
    (8, 1)
    """

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()
        self.calls = 0

    @property
    def bytes(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(t is not torch.Tensor for t in types):
            # A mode runs before tensor subclasses: hand DTensor ops back (NotImplemented) so
            # DTensor desugars them, and the collectives it issues (e.g. an all-gather to
            # redistribute a sharded operand) come back through here as plain-tensor ops.
            return NotImplemented
        name = str(func.overloadpacket._qualified_op_name) if hasattr(func, "overloadpacket") else str(func)
        if ("c10d" in name) and not any(skip in name for skip in _NOT_COLLECTIVES):
            # c10d's in-place ops take (output, input, ...) for gathers and (tensors, ...) otherwise;
            # the functional ops take the input first.
            gather_into = name.startswith("c10d::") and "allgather" in name
            self.by_op[name] += _nbytes(args[1] if gather_into else args[0])
            self.calls += 1
        return func(*args, **(kwargs or {}))
