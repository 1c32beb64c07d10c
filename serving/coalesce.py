"""Coalescing of concurrent decide requests into one call per shard.

Requests for the same shard that arrive while a call to that shard is in
flight wait for it to return and then go together in the next call (at most
``max_batch`` per call, at most ``max_calls`` calls in flight per shard).
Under light load a request is sent at once, so it never waits on a timer;
under heavy load batches grow by themselves and the shard scores a whole
batch with one model run. This is group commit applied to decisions.

A request whose shard answers ``StaleEpoch`` is routed again after the map
is refreshed; one whose profile was merged away (``Moved``) is sent on to the
surviving profile. Both are bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections import defaultdict, deque
from typing import Any

from actors.replies import Expired, Moved, StaleEpoch
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest
from models.errors import Unavailable

SAMPLES = 9  # recent round trips per shard whose median is the estimate
MAX_ROUTES = 4  # re-routes (stale maps, merges) per request
HOLD_S = 0.01  # wait before re-routing when the map has nothing newer (a hand-off)


class _Pending:
    __slots__ = ("deadline", "future", "request", "routes")

    def __init__(self, request: DecideRequest, deadline: float, future: asyncio.Future) -> None:
        self.request = request
        self.deadline = deadline
        self.future = future
        self.routes = 0


class DecideCoalescer:
    """Batches decide requests per shard; ``region`` does the actual calls."""

    def __init__(
        self, region: Any, max_batch: int = 64, max_calls: int = 1, max_queue: int = 1024
    ) -> None:
        if max_batch < 1 or max_calls < 1 or max_queue < 1:
            raise ValueError("max_batch, max_calls and max_queue must be >= 1")
        self.region = region
        self.max_batch = max_batch
        self.max_calls = max_calls
        self.max_queue = max_queue
        self._queues: dict[int, list[_Pending]] = defaultdict(list)
        self._calls: dict[int, int] = defaultdict(int)
        self._tasks: set[asyncio.Task] = set()
        self.batches = 0
        self.requests = 0
        self._round_trips: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=SAMPLES))

    def expected_wait_s(self, customer_id: str) -> float:
        """About how long a decide sent now would take to come back: its own call
        plus the batches queued ahead of it in this replica, at the shard's recent
        round trip (which includes this replica's event-loop lag). Zero while no
        call to the shard is in flight, so a stale estimate is always re-measured.

        The round trip is the median of the last few answered calls, not a
        running mean: one call that waited out a shard restart (seconds) must
        not make the next hundreds of requests look late and be shed to the
        fallback; failed calls are not measured at all.
        """
        shard = self.region.shard_of(customer_id)
        if self._calls[shard] == 0:
            return 0.0
        ahead = len(self._queues[shard]) // self.max_batch
        return self.round_trip_s(shard) * (1 + ahead / self.max_calls)

    def round_trip_s(self, shard: int) -> float:
        """The shard's recent round trip: the median of the last answered calls (0: none yet)."""
        samples = self._round_trips.get(shard)
        return statistics.median(samples) if samples else 0.0

    async def decide(self, request: DecideRequest, deadline: float) -> DecisionRecord | Expired:
        """One decision, or ``Expired`` if the shard saw it after ``deadline`` (epoch s)."""
        loop = asyncio.get_running_loop()
        pending = _Pending(request, deadline, loop.create_future())
        self._enqueue(pending, check_room=True)
        return await pending.future

    def _enqueue(self, p: _Pending, check_room: bool = False) -> None:
        shard = self.region.shard_of(p.request.customer_id)
        if check_room and len(self._queues[shard]) >= self.max_queue:
            raise Unavailable(f"shard {shard} is overloaded; retry", 1.0, code="overloaded")
        self._queues[shard].append(p)
        self._pump(shard)

    def _pump(self, shard: int) -> None:
        queue = self._queues[shard]
        while queue and self._calls[shard] < self.max_calls:
            batch = queue[: self.max_batch]
            del queue[: self.max_batch]
            self._calls[shard] += 1
            self.batches += 1
            self.requests += len(batch)
            # Hold a reference: the event loop keeps only weak ones to tasks.
            task = asyncio.get_running_loop().create_task(self._send(shard, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, shard: int, batch: list[_Pending]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]
            if not live:
                return
            sent = time.monotonic()
            epoch, answer = await self.region.decide_on(
                shard,
                [p.request for p in live],
                [p.deadline for p in live],
                max(p.deadline for p in live) - time.time(),
            )
            self._round_trips[shard].append(time.monotonic() - sent)
            if isinstance(answer, StaleEpoch):
                await self.region.refresh(epoch)
                if self.region.epoch == epoch:  # a partition in hand-off: hold a moment
                    await asyncio.sleep(HOLD_S)
                for p in live:
                    self._reroute(p, p.request)
                return
            for p, outcome in zip(live, answer):
                if isinstance(outcome, Moved):
                    self.region.note_moved(p.request.customer_id, outcome.to)
                    self._reroute(p, dataclasses.replace(p.request, customer_id=outcome.to))
                elif not p.future.done():
                    p.future.set_result(outcome)
        except Exception as exc:  # Unavailable, Failed's error, or anything unexpected
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._calls[shard] -= 1
            self._pump(shard)

    def _reroute(self, p: _Pending, request: DecideRequest) -> None:
        p.routes += 1
        if p.routes > MAX_ROUTES:
            if not p.future.done():
                p.future.set_exception(
                    Unavailable("partition map or profile keeps changing; retry", 1.0)
                )
            return
        p.request = request
        self._enqueue(p)
