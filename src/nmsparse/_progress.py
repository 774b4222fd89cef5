"""A dependency-free progress bar on stderr, for long commands (demo, prune, benchmarks).

On a terminal it redraws one line; in a log (stderr not a TTY) it prints a line at every 10 %
so CI logs show progress without thousands of carriage returns. ``enabled=False`` silences it.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """Count ``total`` units of work with a label; use as a context manager.

    >>> with Progress(3, "solving", enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    """

    def __init__(
        self, total: int, label: str = "", *, enabled: Optional[bool] = None, stream: Optional[TextIO] = None
    ):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True if enabled is None else bool(enabled)
        self.done = 0
        self._start = time.perf_counter()
        self._last_decile = -1
        self._last_draw = 0.0

    def set_label(self, label: str) -> None:
        self.label = label
        self._draw(force=True)

    def advance(self, amount: int = 1) -> None:
        self.done = min(self.done + amount, self.total) if self.total else self.done + amount
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._start
        frac = self.done / self.total if self.total else 1.0
        if self.tty:
            now = time.perf_counter()
            if not force and now - self._last_draw < 0.1 and self.done < self.total:
                return
            self._last_draw = now
            filled = int(round(24 * frac))
            bar = "#" * filled + "." * (24 - filled)
            self.stream.write(f"\r{self.label[:40]:<40} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile and (decile > self._last_decile):
                self._last_decile = decile
                self.stream.write(f"{self.label}: {self.done}/{self.total} ({elapsed:.1f}s)\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
