"""The checkpoint error. (It lives here until ``nmsparse.errors`` adopts it; it is an NMSparseError.)"""

from __future__ import annotations

from ..errors import NMSparseError

__all__ = ["ConvertError", "CheckpointError"]


class ConvertError(NMSparseError, ValueError):
    """A conversion argument is unusable (a bad regex, an unknown ``ragged`` choice, bad calibration data)."""


class CheckpointError(ConvertError):
    """A checkpoint cannot be read or written: missing, corrupt, unknown format, or OUT exists."""
