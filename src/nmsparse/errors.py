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
    """A pattern string or ``NMPattern`` is malformed or out of range (needs 1 <= n <= m), or a density
    (``0.5``, ``"50%"``) or Sparse-IFT sparsity is outside [0, 1]: the one class for a bad pattern or
    density at every entry point (one parser, :func:`nmsparse.pattern.parse_spec`)."""


class ShapeError(NMSparseError, ValueError):
    """A tensor's shape or dimensionality does not fit the requested layout or pattern, or no layer of a
    model can take the pattern (``sparsify_`` and ``prune_`` alike: the message lists why each was left dense)."""


class ScoreError(NMSparseError, ValueError):
    """Scores or weights are unusable: NaN/Inf, negative scores, unsupported dtype, empty."""


class MethodError(NMSparseError, ValueError):
    """An unknown or unsupported mask method was requested."""


class MaskError(NMSparseError, ValueError):
    """A mask breaks its pattern; the message names the first bad group or tile."""


class ArgumentError(NMSparseError, ValueError):
    """Any other argument outside its documented range or choices: a count, a rate, a schedule, a
    mode such as ``gradient=``, a model that is not (yet) what the call needs."""


class ConvertError(NMSparseError, ValueError):
    """A conversion argument is unusable (a bad regex, an unknown ``ragged`` choice, bad calibration data)."""


class CheckpointError(ConvertError, OSError):
    """A checkpoint cannot be read or written: missing, corrupt, unknown format, unsafe, or OUT exists.

    It is also an ``OSError`` (file trouble) and, through :class:`ConvertError`, a ``ValueError``.
    """


def clip_text(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters: a longer one is cut at the last word
    boundary before the limit and ends with ``...``, so a quoted foreign message is never cut
    mid-word (a single word longer than the limit is cut where it must be).

    >>> clip_text("the header is not valid JSON at all", 20)
    'the header is not...'
    """
    one = " ".join(str(text).split())
    if len(one) <= limit:
        return one
    room = max(1, limit - 3)
    cut = one[: room + 1]
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut[:room]
    return head.rstrip(" ,;:.") + "..."


def quote_error(err: BaseException, limit: int = 200) -> str:
    """``"TypeError: <first line of its message>"``, the message clipped by :func:`clip_text`: how
    an error message quotes an exception raised by the user's code.

    >>> quote_error(ValueError("bad value\\nmore detail"))
    'ValueError: bad value'
    """
    text = str(err).strip()
    return f"{type(err).__name__}: {clip_text(text.splitlines()[0] if text else '', limit)}"


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocator failure: ``MemoryError``, torch's ``OutOfMemoryError`` (GPU) or the
    ``RuntimeError`` the CPU allocator raises ("can't allocate memory")."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def allocation_text(err: BaseException) -> str:
    """What an allocator failure asked for, in a few words (torch's own message is several lines)."""
    import re

    found = re.search(r"tried to allocate ([0-9.]+ ?[KMGT]?i?B|[0-9]+ bytes)", str(err))
    return f"torch tried to allocate {found.group(1)}" if found else type(err).__name__


def guard_resources(where: str):
    """Decorator: an allocator failure inside ``where`` becomes one-line :class:`ShapeError` naming the
    input's shape (the first argument's, when it has one), with the original kept as ``__cause__``.

    A weight torch holds can still be too large to solve: e.g. ``torch.ones(1).expand(200000, 200000)``
    is a legal view of 4 bytes, but its scores need 160 GB.
    """
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NMSparseError:
                raise
            except (MemoryError, RuntimeError) as err:
                if not is_out_of_memory(err):
                    raise
                shape = getattr(args[0], "shape", None) if args else None
                what = f"an input of shape {tuple(shape)}" if shape is not None else "its input"
                raise ShapeError(
                    f"{where}: out of memory on {what} ({allocation_text(err)}); split the tensor into parts, or use a device "
                    "with more memory."
                ) from err
        return guarded

    return wrap
