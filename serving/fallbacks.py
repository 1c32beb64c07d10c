"""``FallbackTally``: one replica's fallback answers, counted and sent to a shard.

Fallbacks are decided in the ingress (the shard missed the deadline or is
down), so no shard sees them. The replica counts them per (hour, channel,
offer) and, at most once a second, sends the counts to one live shard as a
batch with an id (``ProfileShard.count_fallbacks``, journalled there). Reports
merge all shards' counters on read, so which shard holds them does not
matter. A batch whose answer is lost is retried to the same shard with the
same id, which counts it once; after ``GIVE_UP_S`` of failures the batch goes
to another shard (the one case where a batch could count twice). Memory is
bounded: at most ``MAX_KEYS`` distinct keys wait; beyond that new keys are
dropped and counted in :attr:`dropped`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from models.reporting.counters import bucket_of

log = logging.getLogger("rtim.fallbacks")

FLUSH_S = 1.0
CALL_TIMEOUT_S = 2.0
GIVE_UP_S = 30.0
MAX_KEYS = 10000


class FallbackTally:
    """Counts one replica's fallbacks and delivers them to the shards."""

    def __init__(self) -> None:
        self.pending: dict[tuple[int, str, str | None], int] = {}
        self.batch: tuple[str, int, list[list]] | None = None  # id, shard, rows in flight
        self.batch_since = 0.0
        self.dropped = 0
        self.sent = 0
        self._ids = (f"{os.urandom(6).hex()}-{i}" for i in itertools.count())
        self._shard = 0
        self._task: asyncio.Task | None = None

    def add(self, channels: Sequence[str], offers: Sequence[dict], now: float) -> None:
        """One fallback answer: each offer on its channel, or no message on each channel."""
        hour = bucket_of(now)
        keys = [(hour, o["channel"], o["offer_id"]) for o in offers] or [
            (hour, ch, None) for ch in channels
        ]
        for key in keys:
            if key in self.pending or len(self.pending) < MAX_KEYS:
                self.pending[key] = self.pending.get(key, 0) + 1
            else:
                self.dropped += 1

    def start(self, shards: Any) -> None:
        """Run the sender (once); ``shards()`` gives the current shard handles."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(shards))

    async def _run(self, shards: Any) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush(shards())
            except Exception as exc:  # never let the sender die; the next round retries
                log.warning("sending fallback counts failed: %s", exc)

    async def flush(self, handles: Sequence[Any]) -> bool:
        """Send the batch in flight (or a new one); True when nothing is left to send."""
        if self.batch is None:
            if not self.pending or not handles:
                return not self.pending
            rows = [[h, ch, o, n] for (h, ch, o), n in self.pending.items()]
            self.pending = {}
            self._shard = (self._shard + 1) % len(handles)
            self.batch = (next(self._ids), self._shard, rows)
            self.batch_since = time.monotonic()
        batch_id, shard, rows = self.batch
        if shard >= len(handles):
            shard = 0
        try:
            answer = await asyncio.wait_for(
                handles[shard].count_fallbacks.remote(batch_id, rows), CALL_TIMEOUT_S
            )
            ok = isinstance(answer, int)
        except Exception:
            ok = False
        if ok:
            self.sent += sum(r[3] for r in rows)
            self.batch = None
            return not self.pending
        if time.monotonic() - self.batch_since > GIVE_UP_S:
            self.batch = (batch_id + "+", (shard + 1) % len(handles), rows)
            self.batch_since = time.monotonic()
        return False
