"""Library exceptions.

Every error raised on bad user input is an :class:`NMSparseError`, and always one of its
subclasses below, never the bare base class (a test over the sources enforces it). Each subclass
also derives from the matching built-in (``ValueError``; :class:`CheckpointError` is an ``OSError``
too) so that callers who catch the built-in keep working. Messages are one line: the rule, the
value received and the fix; model-level functions name the layer.
"""

from __future__ import annotations

__all__ = [
    "NMSparseError",
    "PatternError",
    "ShapeError",
    "ScoreError",
    "MethodError",
    "MaskError",
    "ArgumentError",
    "ConvertError",
    "CheckpointError",
]


class NMSparseError(Exception):
    """Base class of all nmsparse errors."""


class PatternError(NMSparseError, ValueError):
    """A pattern string or ``NMPattern`` is malformed or out of range (needs 1 <= n <= m)."""


class ShapeError(NMSparseError, ValueError):
    """A tensor's shape or dimensionality does not fit the requested layout or pattern."""


class ScoreError(NMSparseError, ValueError):
    """Scores or weights are unusable: NaN/Inf, negative scores, unsupported dtype, empty."""


class MethodError(NMSparseError, ValueError):
    """An unknown or unsupported mask method was requested."""


class MaskError(NMSparseError, ValueError):
    """A mask breaks its pattern; the message names the first bad group or tile."""


class ArgumentError(NMSparseError, ValueError):
    """Any other argument outside its documented range or choices: a count, a rate, a schedule, a
    mode such as ``ste=``, a model that is not (yet) what the call needs."""


class ConvertError(NMSparseError, ValueError):
    """A conversion argument is unusable (a bad regex, an unknown ``ragged`` choice, bad calibration data)."""


class CheckpointError(ConvertError, OSError):
    """A checkpoint cannot be read or written: missing, corrupt, unknown format, unsafe, or OUT exists.

    It is also an ``OSError`` (file trouble) and, through :class:`ConvertError`, a ``ValueError``.
    """
