"""The bad-input campaign's harness: table-driven cases, each classified as a right result, a clear
error, or anything else (a defect).

A *clear error* is an :class:`nmsparse.NMSparseError` of the expected class whose message is one
line that matches the case's pattern. For the CLI, it is exit status 1 (2 for usage errors) with
one line on stderr and no traceback. Every case is a pytest test; ``conftest.py`` counts the
outcomes and prints the campaign's totals at the end of the run:

    python -m pytest tests/campaign -q

A table is a list of :class:`Case`; a test module turns it into tests with :func:`parametrize`.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Type

import pytest

from nmsparse.errors import NMSparseError

RIGHT = "right result"
CLEAR = "clear error"
OTHER = "anything else"

# Filled by run_case / run_cli_case; conftest.py prints it in the terminal summary.
OUTCOMES: dict = {RIGHT: 0, CLEAR: 0, OTHER: 0}


@dataclass(frozen=True)
class Case:
    """One campaign case.

    ``call()`` runs it. With ``error=None`` the case must succeed and ``check(result)`` (if given)
    must pass; otherwise it must raise ``error`` (an NMSparseError subclass) with a one-line
    message that matches ``match`` (a regex, searched).
    """

    id: str
    call: Callable[[], object]
    error: Optional[Type[BaseException]] = None
    match: Optional[str] = None
    check: Optional[Callable[[object], None]] = None


@dataclass(frozen=True)
class CliCase:
    """One CLI case: ``argv`` (without the program name), the expected exit status, and a regex the
    single stderr line must match when the status is non-zero. ``setup()`` may prepare files and
    return extra argv; ``check()`` runs after, e.g. to prove nothing was lost."""

    id: str
    argv: Callable[[], Sequence[str]]
    status: int = 0
    match: Optional[str] = None
    check: Optional[Callable[[], None]] = None


def parametrize(cases: Sequence, name: str = "case"):
    """``@parametrize(CASES)`` over a table, with each case's id as the test id."""
    ids = [c.id for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"duplicate campaign case ids: {sorted(dupes)}")
    return pytest.mark.parametrize(name, cases, ids=ids)


def _record(outcome: str) -> None:
    OUTCOMES[outcome] += 1


def run_case(case: Case) -> str:
    """Run ``case``; return RIGHT or CLEAR, or fail the test (counted as OTHER)."""
    try:
        try:
            result = case.call()
        except NMSparseError as exc:
            if case.error is None:
                raise AssertionError(f"expected a result, got {type(exc).__name__}: {exc}") from exc
            _assert_clear(exc, case.error, case.match)
            _record(CLEAR)
            return CLEAR
        if case.error is not None:
            raise AssertionError(f"expected {case.error.__name__}, got a result: {result!r:.200}")
        if case.check is not None:
            case.check(result)
        _record(RIGHT)
        return RIGHT
    except BaseException:
        _record(OTHER)
        raise


def _assert_clear(exc: BaseException, expected: Type[BaseException], match: Optional[str]) -> None:
    message = str(exc)
    assert isinstance(exc, expected), f"expected {expected.__name__}, got {type(exc).__name__}: {message}"
    assert "\n" not in message.strip(), f"error message is not one line: {message!r}"
    assert len(message) >= 20, f"error message too short to name the rule, value and fix: {message!r}"
    if match is not None:
        assert re.search(match, message), f"message {message!r} does not match {match!r}"


def run_cli(argv: Sequence[str]) -> Tuple[int, str, str]:
    """Run ``nmsparse`` in-process; return (status, stdout, stderr)."""
    from nmsparse.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return int(status or 0), out.getvalue(), err.getvalue()


def run_cli_case(case: CliCase) -> str:
    """Run a CLI case; return RIGHT or CLEAR, or fail the test (counted as OTHER)."""
    try:
        status, _, err = run_cli(case.argv())
        assert "Traceback" not in err, f"traceback on stderr:\n{err}"
        assert status == case.status, f"exit status {status}, expected {case.status}; stderr: {err!r}"
        if status:
            lines = [line for line in err.splitlines() if line.strip()]
            if status == 1:
                assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
            if case.match is not None:
                assert re.search(case.match, err), f"stderr {err!r} does not match {case.match!r}"
        if case.check is not None:
            case.check()
        outcome = CLEAR if status else RIGHT
        _record(outcome)
        return outcome
    except BaseException:
        _record(OTHER)
        raise
