"""The event-loop pause counter a shard reports (actors/loopwatch.py)."""

from __future__ import annotations

import asyncio
import time

from actors.loopwatch import SLOW_S, LoopWatch


async def test_a_held_loop_is_counted_as_one_pause_of_its_length() -> None:
    watch = LoopWatch()
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.1)
    assert watch.wakeups >= 3
    quiet = watch.pauses
    time.sleep(0.12)  # what a large inline snapshot did to a shard
    await asyncio.sleep(0.05)
    task.cancel()
    assert watch.pauses == quiet + 1
    assert 0.1 <= watch.longest_s < 1.0
    assert watch.take_pending()[-1] == watch.longest_s
    assert watch.take_pending() == []
    stats = watch.stats()
    assert stats["pauses"] == watch.pauses and stats["slow_ms"] == SLOW_S * 1e3


def test_short_delays_are_not_pauses() -> None:
    watch = LoopWatch()
    for late in (0.0, 0.001, SLOW_S / 2):
        watch.note(late)
    assert (watch.pauses, watch.wakeups, watch.paused_s) == (0, 3, 0.0)
