"""How long a shard's event loop was kept from running (pauses), for operators and the bench.

Every decision, event batch and timer of a shard runs on one event loop; any
code that holds it (a large snapshot packed in one call, a garbage collection,
a slow disk call made inline) delays every caller, and a decide waiting longer
than its deadline is answered by the fallback. :class:`LoopWatch` sleeps
:data:`INTERVAL_S` again and again and counts how late it wakes: a wake-up
later than :data:`SLOW_S` is a pause. The counts are in the shard's stats
(``loop``) and in the ``rtim_loop_pause_seconds`` histogram; the cost is about
a hundred wake-ups a second.
"""

from __future__ import annotations

import asyncio
from typing import Any

INTERVAL_S = 0.01
SLOW_S = 0.025  # half the default decide deadline
MAX_PENDING = 1024  # pauses kept for the histogram between flushes


class LoopWatch:
    """Counts the running loop's pauses; :meth:`run` is its task."""

    def __init__(self) -> None:
        self.pauses = 0  # wake-ups later than SLOW_S
        self.paused_s = 0.0  # their lateness, summed
        self.longest_s = 0.0
        self.wakeups = 0
        self._pending: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(INTERVAL_S)
            self.note(loop.time() - started - INTERVAL_S)

    def note(self, late_s: float) -> None:
        self.wakeups += 1
        if late_s < SLOW_S:
            return
        self.pauses += 1
        self.paused_s += late_s
        self.longest_s = max(self.longest_s, late_s)
        if len(self._pending) < MAX_PENDING:
            self._pending.append(late_s)

    def take_pending(self) -> list[float]:
        """The pauses since the last call (for the histogram)."""
        out, self._pending = self._pending, []
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "pauses": self.pauses,
            "paused_s": round(self.paused_s, 3),
            "longest_ms": round(self.longest_s * 1e3, 1),
            "slow_ms": SLOW_S * 1e3,
            "wakeups": self.wakeups,
        }
