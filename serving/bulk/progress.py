"""A one-line progress report for long jobs: rows, rows/s, percent done and ETA.

On a terminal the line rewrites itself; otherwise (logs, CI, a pipe) one line
is printed per interval, so a redirected job still shows it is alive.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Call :meth:`update` as often as you like; it prints at most once per ``interval_s``."""

    def __init__(
        self, label: str, stream: TextIO | None = None, interval_s: float = 1.0, quiet: bool = False
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.quiet = quiet
        self.started = time.monotonic()
        self._last_print = 0.0
        self._tty = self.stream.isatty()
        self._printed = False

    def rate(self, rows: int) -> float:
        elapsed = time.monotonic() - self.started
        return rows / elapsed if elapsed > 0 else 0.0

    def line(self, rows: int, fraction: float | None, extra: str = "") -> str:
        """The progress text for ``rows`` done and ``fraction`` (0..1, or None if unknown)."""
        elapsed = time.monotonic() - self.started
        text = f"{self.label}: {rows:,} rows  {self.rate(rows):,.0f} rows/s"
        if fraction is not None and fraction > 0:
            remaining = elapsed * (1 - fraction) / fraction
            text += f"  {fraction:.0%}  ETA {_clock(remaining)}"
        return text + (f"  {extra}" if extra else "")

    def update(
        self, rows: int, fraction: float | None = None, extra: str = "", force: bool = False
    ) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self._last_print < self.interval_s):
            return
        self._last_print = now
        text = self.line(rows, fraction, extra)
        if self._tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._printed = True

    def finish(self, rows: int, fraction: float | None = 1.0, extra: str = "") -> None:
        """Print the final line (and end the rewriting line on a terminal)."""
        self.update(rows, fraction, extra, force=True)
        if self._tty and self._printed and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
