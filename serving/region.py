"""``ShardRegion``: the ingress side of sharding (Akka's term).

It caches the partition map and the shard actor handles, routes each call
to the shard that owns the customer, and refreshes its cache from the
coordinator when a shard reports a newer epoch. Calls that fail because a
shard actor died are retried with backoff while the shard restarts, within
the call's deadline; events are idempotent by ``event_id`` so a retried
batch is never double counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from actors.coordinator import get_or_create_coordinator
from models.errors import Unavailable
from models.events import Event
from models.partitioning import PartitionMap
from models.settings import Settings

log = logging.getLogger("rtim.region")

_RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError)
_MAX_STALE_RETRIES = 3
_MAX_MOVES = 4


class ShardRegion:
    """Routes work to shards; one per ingress replica."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.map: PartitionMap | None = None
        self.shards: list[Any] = []
        self.coordinator: Any = None
        self._refresh_lock = asyncio.Lock()
        self.inflight: dict[int, int] = defaultdict(int)

    async def start(self) -> None:
        self.coordinator = get_or_create_coordinator(self.settings)
        await self.refresh(0)

    async def refresh(self, seen_epoch: int) -> None:
        """Fetch the topology unless someone already did for ``seen_epoch``."""
        async with self._refresh_lock:
            if self.map is not None and self.map.epoch > seen_epoch:
                return
            topo = await self.coordinator.topology.remote()
            m = topo["map"]
            self.map = PartitionMap(m["epoch"], tuple(m["owners"]), m["shards"])
            self.shards = topo["shards"]
            log.info("partition map epoch %s, %s shards", self.map.epoch, len(self.shards))

    def shard_of(self, customer_id: str) -> int:
        assert self.map is not None
        return self.map.shard_of(customer_id)

    async def _invoke(self, shard: int, method: str, args: tuple, deadline: float) -> Any:
        """One shard call (map epoch appended), retried while the actor restarts.

        At most ``max_inflight_per_shard`` calls per shard are in flight from
        this replica; beyond that the caller gets a 503 at once instead of
        queueing without bound in the actor's mailbox.
        """
        if self.inflight[shard] >= self.settings.max_inflight_per_shard:
            raise Unavailable(f"shard {shard} is overloaded; retry", 1.0, code="overloaded")
        self.inflight[shard] += 1
        try:
            return await self._invoke_once(shard, method, args, deadline)
        finally:
            self.inflight[shard] -= 1

    async def _invoke_once(self, shard: int, method: str, args: tuple, deadline: float) -> Any:
        delay = 0.05
        while True:
            assert self.map is not None
            try:
                ref = getattr(self.shards[shard], method).remote(*args, self.map.epoch)
                remaining = max(deadline - time.monotonic(), 0.001)
                result = await asyncio.wait_for(ref, timeout=remaining)
            except (*_RETRYABLE, asyncio.TimeoutError, GetTimeoutError) as exc:
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"shard {shard} is not answering ({type(exc).__name__}); retry later",
                        retry_after_s=1.0,
                        code="shard_unavailable",
                    ) from None
                log.warning("shard %s call %s failed (%s); retrying", shard, method, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if isinstance(result, dict) and "unavailable" in result:
                raise Unavailable(
                    f"shard {shard}: {result['unavailable']}", 5.0, code="storage_unavailable"
                )
            return result

    async def call_for(self, customer_id: str, method: str, *args: Any) -> Any:
        """Call ``method(customer_id, *args, epoch)`` on the customer's shard.

        A ``{"stale": e}`` answer means our map is old: refresh and re-route.
        """
        deadline = time.monotonic() + self.settings.shard_call_timeout_s
        for _ in range(_MAX_STALE_RETRIES + 1):
            assert self.map is not None
            epoch = self.map.epoch
            result = await self._invoke(
                self.shard_of(customer_id), method, (customer_id, *args), deadline
            )
            if not (isinstance(result, dict) and "stale" in result):
                return result
            await self.refresh(epoch)
        raise Unavailable("partition map keeps changing; retry", code="rebalancing")

    async def scatter(
        self,
        method: str,
        items: Sequence[Any],
        key: Callable[[Any], str],
        *extra: Any,
        timeout_s: float | None = None,
        send: Callable[[list[Any]], Any] | None = None,
    ) -> list[tuple[list[Any], Any]]:
        """Send ``items`` to their owning shards, one call per shard, in parallel.

        Each shard gets ``method(its_items, *extra, epoch)``. Groups a shard
        refused as stale are re-routed after a map refresh; the others are
        not sent again. ``send`` turns a group into what the shard receives
        (default: the group itself). Returns ``(items, result)`` per call.
        """
        deadline = time.monotonic() + (timeout_s or self.settings.shard_call_timeout_s)
        done: list[tuple[list[Any], Any]] = []
        pending = list(items)
        for _ in range(_MAX_STALE_RETRIES + 1):
            assert self.map is not None
            epoch = self.map.epoch
            groups: dict[int, list[Any]] = defaultdict(list)
            shard_of = self.map.shard_of
            for item in pending:
                groups[shard_of(key(item))].append(item)
            results = await asyncio.gather(
                *(
                    self._invoke(sh, method, (send(grp) if send else grp, *extra), deadline)
                    for sh, grp in groups.items()
                )
            )
            pending = []
            for grp, result in zip(groups.values(), results):
                if isinstance(result, dict) and "stale" in result:
                    pending.extend(grp)
                else:
                    done.append((grp, result))
            if not pending:
                return done
            await self.refresh(epoch)
        raise Unavailable("partition map keeps changing; retry", code="rebalancing")

    async def decide_on(
        self,
        shard: int,
        requests: list[Any],
        deadlines: list[float] | None,
        timeout_s: float,
    ) -> dict[str, Any]:
        """One decide call for requests all owned by ``shard`` (by our map).

        A stale answer comes back as ``{"stale": e, "stale_seen": our_epoch}``
        for the caller to refresh and re-route.
        """
        assert self.map is not None
        epoch = self.map.epoch
        deadline = time.monotonic() + max(timeout_s, 0.001)
        result = await self._invoke(shard, "decide", (requests, deadlines), deadline)
        if "stale" in result:
            return {**result, "stale_seen": epoch}
        return result

    async def apply_events(
        self, events: Sequence[Event], on_moved: Callable[[str, str], None] | None = None
    ) -> tuple[int, int]:
        """Apply a validated batch: one call per owning shard, all in parallel.

        Events for a profile that was merged away are sent on to the profile
        it went to (``on_moved`` hears about each such move).
        """
        applied = dups = 0
        pending = list(events)
        for _ in range(_MAX_MOVES):
            results = await self.scatter("apply_events", pending, _customer_of, send=_pack)
            pending = []
            for group, r in results:
                applied += r["applied"]
                dups += r["duplicates"]
                for i, target in r.get("moved", ()):
                    ev = group[i]
                    if on_moved is not None:
                        on_moved(ev.customer_id, target)
                    pending.append(ev._replace(customer_id=target))
            if not pending:
                return applied, dups
        raise Unavailable("profiles keep moving (merges); retry", code="rebalancing")

    async def move_profile(self, absorbed: str, survivor: str) -> dict[str, Any]:
        """Merge ``absorbed`` into ``survivor``; its shard leaves a tombstone."""
        result = await self.call_for(absorbed, "move_out", survivor)
        if not result.get("pushed"):
            raise Unavailable("profile merge is pending; retry", 1.0, code="merge_pending")
        return result

    async def ping_all(self, timeout_s: float = 2.0) -> list[dict | None]:
        return await ping_each(self.shards, timeout_s)

    async def broadcast(self, method: str, *args: Any, timeout_s: float = 30.0) -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    asyncio.wait_for(getattr(h, method).remote(*args), timeout_s)
                    for h in self.shards
                )
            )
        )


async def ping_each(handles: Sequence[Any], timeout_s: float) -> list[dict | None]:
    """Every actor's ``ping()`` answer, None for one that does not answer in time."""

    async def one(h: Any) -> dict | None:
        try:
            return await asyncio.wait_for(h.ping.remote(), timeout_s)
        except Exception:
            return None

    return list(await asyncio.gather(*(one(h) for h in handles)))


def _pack(events: list[Event]) -> bytes:
    """One msgpack blob per shard call: cheaper to send than Event objects."""
    return msgpack.packb([list(ev) for ev in events], use_bin_type=True)


def _customer_of(item: Any) -> str:
    return item.customer_id
