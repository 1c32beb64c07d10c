"""``ShardRegion``: the ingress side of sharding (Akka's term).

A :class:`PartitionRouter` caches one shard group's partition map and shard
handles from the coordinator's topology, routes each call to the shard that
owns the key, and decodes the shards' typed replies (:mod:`actors.replies`)
in one place. ``ShardRegion`` is the router of profile shards (with the
event and decide paths); its ``identities`` is the router of identity
shards, used by ``serving/identity.py``. For both:

- ``StaleEpoch``: refresh the topology and route again; while a partition
  is being handed off its new owner refuses it until it has imported it, and
  the coordinator has no newer map to give, so the call is *held* (short,
  growing sleeps, within the call's deadline) and tried again: a client sees
  a short wait during a move, not an error;
- ``ShardUnavailable`` / ``Failed``: raise the matching project error;
- ``Moved``: follow the merge to the surviving profile, telling ``on_moved``;
- decide calls travel msgpack-packed both ways (:mod:`actors.decide_wire`);
- a dead or restarting actor: retry with backoff within the call's deadline
  (events are idempotent by ``event_id``, so a retried batch is never double
  counted), then ``Unavailable``;
- the same-node wire (:mod:`actors.wire`) failing: a call it certainly did
  not send goes through Ray at once; one whose connection broke after it was
  sent is sent again only if repeating it is harmless (``RETRY_SAFE``:
  events), else (decides) it is ``Unavailable`` and the ingress answers with
  the fallback: the shard may already have decided, and deciding again would
  count a second impression.

Per-customer outcomes that only the caller can handle (``Expired`` decides,
``Erased`` profiles) are returned as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from actors.coordinator import get_or_create_coordinator
from actors.decide_wire import pack_requests, unpack_answers
from actors.profiles import pack_events
from actors.replies import Failed, Moved, ShardUnavailable, StaleEpoch
from actors.wire import RETRY_SAFE, WIRE_METHODS, WireBroken, WireLink, WireReplyLost
from models.customer.events import Event
from models.errors import Unavailable
from models.partitioning import PartitionMap
from models.settings import Settings

log = logging.getLogger("rtim.region")

_RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError)
WIRE_LOOKUP_S = 1.0  # at most one socket lookup per shard per this long
MAX_REROUTES = 200  # stale-map refreshes and holds per call (the deadline bounds them too)
HOLD_S = (0.005, 0.1)  # first and longest wait for a partition in hand-off
REFRESH_EVERY_S = 0.05  # while holding, ask the coordinator for news at most this often
MAX_MOVES = 4  # merges followed per call

T = TypeVar("T")


def decode(reply: Any, shard: str) -> Any:
    """Raise for a refused call; return anything else (``StaleEpoch`` included)."""
    if isinstance(reply, ShardUnavailable):
        raise Unavailable(f"{shard}: {reply.reason}", 5.0, code=reply.code)
    if isinstance(reply, Failed):
        raise reply.error()
    return reply


GROUPS = {"profile": ("map", "shards"), "identity": ("identity_map", "identity_shards")}


class PartitionRouter:
    """Routes work to the shards of one group (``profile`` or ``identity``) by its map."""

    def __init__(self, settings: Settings, group: str = "profile") -> None:
        self.settings = settings
        self.group = group
        self._map_key, self._shards_key = GROUPS[group]
        self.map: PartitionMap | None = None
        self.shards: list[Any] = []
        self.coordinator: Any = None
        self._refresh_lock = asyncio.Lock()
        self.inflight: dict[int, int] = defaultdict(int)
        self.reroutes = 0
        self.holds = 0  # waits for a partition in hand-off
        self._refreshed_at = 0.0
        # Same-node shards' sockets (actors/wire.py): hot calls skip Ray's call machinery.
        self.node_id: str | None = None
        self._links: dict[int, WireLink] = {}
        self._looked_up: dict[int, float] = {}  # when we last asked a shard for its socket
        self._lookups: set[asyncio.Task] = set()
        self.wire_calls = 0
        self.ray_calls = 0

    async def start(self, coordinator: Any = None) -> None:
        self.coordinator = coordinator or get_or_create_coordinator(self.settings)
        self.node_id = ray.get_runtime_context().get_node_id()
        await self.refresh(0)

    async def refresh(self, seen_epoch: int) -> None:
        """Fetch the topology unless someone already did since ``seen_epoch``."""
        async with self._refresh_lock:
            if self.map is not None and self.map.epoch > seen_epoch:
                return
            try:
                topo = await self.coordinator.topology.remote()
            except _RETRYABLE as exc:  # the coordinator is restarting: keep our map, hold
                if self.map is None:
                    raise Unavailable("the shard coordinator is restarting; retry") from None
                log.warning("topology refresh failed (%s); keeping epoch %s", exc, self.map.epoch)
                self._refreshed_at = time.monotonic()
                return
            self._refreshed_at = time.monotonic()
            m = topo[self._map_key]
            self.map = PartitionMap(m["epoch"], tuple(m["owners"]), m["shards"])
            shards = topo[self._shards_key]
            if list(map(_actor_of, shards)) != list(map(_actor_of, self.shards)):
                self._close_links()  # shards added, retired or moved node: look them up again
            self.shards = shards
            log.info("%s map epoch %s, %s shards", self.group, self.map.epoch, len(self.shards))

    @property
    def epoch(self) -> int:
        assert self.map is not None
        return self.map.epoch

    def shard_of(self, customer_id: str) -> int:
        assert self.map is not None
        return self.map.shard_of(customer_id)

    async def after_stale(
        self, epoch: int, reply: StaleEpoch, attempt: int, deadline: float
    ) -> None:
        """A shard refused the map of ``epoch``: get a newer map, or hold and try again.

        Raises ``Unavailable`` (code ``rebalancing``) once the deadline or the
        attempt bound is reached.
        """
        if attempt > MAX_REROUTES or time.monotonic() >= deadline:
            raise Unavailable("partition map keeps changing; retry", code="rebalancing")
        self.reroutes += 1
        if reply.epoch > epoch or time.monotonic() - self._refreshed_at >= REFRESH_EVERY_S:
            await self.refresh(epoch)
        if self.epoch == epoch:  # nothing newer: a partition is in hand-off
            self.holds += 1
            pause = min(HOLD_S[0] * 2 ** min(attempt, 10), HOLD_S[1])
            await asyncio.sleep(max(min(pause, deadline - time.monotonic()), 0.0))

    # -- one call -----------------------------------------------------------------------

    async def invoke(self, shard: int, method: str, args: tuple, deadline: float) -> Any:
        """One shard call with our epoch appended; refusals decoded, actor deaths retried.

        At most ``max_inflight_per_shard`` calls per shard are in flight from
        this replica; beyond that the caller gets a 503 at once instead of
        queueing without bound in the actor's mailbox.
        """
        if self.inflight[shard] >= self.settings.max_inflight_per_shard:
            raise Unavailable(f"shard {shard} is overloaded; retry", 1.0, code="overloaded")
        self.inflight[shard] += 1
        try:
            return decode(await self._invoke_once(shard, method, args, deadline), f"shard {shard}")
        finally:
            self.inflight[shard] -= 1

    async def _invoke_once(self, shard: int, method: str, args: tuple, deadline: float) -> Any:
        return await self._retrying(shard, method, (*args, self.epoch), deadline, stale=True)

    async def ask(self, shard: int, method: str, *args: Any, timeout_s: float = 30.0) -> Any:
        """``method(*args)`` on one shard, no epoch: reads and admin calls.

        Retried like a routed call while the actor restarts (a replica whose
        handle has not seen the restart yet gets ``ActorUnavailableError`` on
        its first call), answer decoded; ``Unavailable`` after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        return decode(await self._retrying(shard, method, args, deadline), f"shard {shard}")

    async def _retrying(
        self, shard: int, method: str, args: tuple, deadline: float, stale: bool = False
    ) -> Any:
        delay = 0.05
        while True:
            if shard >= len(self.shards):  # routed by a map from before shards were retired
                if stale:
                    return StaleEpoch(self.epoch + 1)
                raise Unavailable(f"shard {shard} was retired; retry", code="rebalancing")
            link = self._link(shard, method)
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                if link is not None:
                    try:
                        reply = await asyncio.wait_for(link.call(method, args), timeout=remaining)
                        self.wire_calls += 1
                        return reply
                    except WireBroken as exc:  # the shard restarted or moved: Ray, at once
                        self._links.pop(shard, None)
                        if isinstance(exc, WireReplyLost) and method not in RETRY_SAFE:
                            raise Unavailable(
                                f"shard {shard}: connection lost during {method}; not repeated",
                                retry_after_s=1.0,
                                code="shard_unavailable",
                            ) from None
                        log.info("shard %s socket closed (%s); calling through Ray", shard, exc)
                        remaining = max(deadline - time.monotonic(), 0.001)
                ref = getattr(self.shards[shard], method).remote(*args)
                self.ray_calls += 1
                return await asyncio.wait_for(ref, timeout=remaining)
            except (*_RETRYABLE, asyncio.TimeoutError, GetTimeoutError) as exc:
                if isinstance(exc, ActorDiedError):
                    # Dead for good: a retired shard, or moved to another node
                    # (rtim rebalance)? Then a newer topology has its new handle.
                    epoch = self.epoch
                    await self.refresh(epoch)
                    if stale and self.epoch != epoch:
                        return StaleEpoch(self.epoch)
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"shard {shard} is not answering ({type(exc).__name__}); retry later",
                        retry_after_s=1.0,
                        code="shard_unavailable",
                    ) from None
                log.warning("shard %s call %s failed (%s); retrying", shard, method, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- the same-node wire (actors/wire.py) -------------------------------------------

    def _link(self, shard: int, method: str) -> WireLink | None:
        """The shard's socket link for a hot call, if it runs on our node and has one.

        Without one yet, the shard is asked for its socket in the background
        (at most once a second per shard) and this call goes through Ray.
        """
        if method not in WIRE_METHODS or not self.settings.shard_wire:
            return None
        link = self._links.get(shard)
        if link is not None and not link.broken:
            return link
        now = time.monotonic()
        if now - self._looked_up.get(shard, -WIRE_LOOKUP_S) >= WIRE_LOOKUP_S:
            self._looked_up[shard] = now
            task = asyncio.get_running_loop().create_task(self._look_up(shard))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
        return None

    async def _look_up(self, shard: int) -> None:
        handle = self.shards[shard]
        try:
            address = await asyncio.wait_for(handle.wire_address.remote(), WIRE_LOOKUP_S * 5)
        except Exception as exc:  # restarting, moved, gone: Ray serves meanwhile
            log.info("shard %s socket lookup failed: %s", shard, exc)
            return
        if (
            address
            and address["node"] == self.node_id
            and shard < len(self.shards)
            and _actor_of(self.shards[shard]) == _actor_of(handle)
        ):
            old = self._links.get(shard)
            if old is None or old.broken or old.path != address["path"]:
                self._links[shard] = WireLink(address["path"])

    def _close_links(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._looked_up.clear()

    async def scatter(
        self,
        method: str,
        items: Sequence[T],
        key: Callable[[T], str],
        *extra: Any,
        timeout_s: float | None = None,
        send: Callable[[list[T]], Any] | None = None,
    ) -> list[tuple[list[T], Any]]:
        """Send ``items`` to their owning shards, one call per shard, in parallel.

        Each shard gets ``method(its_items, *extra, epoch)``. Groups a shard
        refused as stale are re-routed after a map refresh; the others are
        not sent again. ``send`` turns a group into what the shard receives
        (default: the group itself). Returns ``(items, result)`` per call.
        """
        deadline = time.monotonic() + (timeout_s or self.settings.shard_call_timeout_s)
        done: list[tuple[list[T], Any]] = []
        pending = list(items)
        attempt = 0
        while True:
            assert self.map is not None
            epoch = self.map.epoch
            groups: dict[int, list[T]] = defaultdict(list)
            shard_of = self.map.shard_of
            for item in pending:
                groups[shard_of(key(item))].append(item)
            results = await asyncio.gather(
                *(
                    self.invoke(sh, method, (send(grp) if send else grp, *extra), deadline)
                    for sh, grp in groups.items()
                )
            )
            pending = []
            stale = StaleEpoch(epoch)
            for grp, result in zip(groups.values(), results):
                if isinstance(result, StaleEpoch):
                    pending.extend(grp)
                    stale = max(stale, result, key=lambda r: r.epoch)
                else:
                    done.append((grp, result))
            if not pending:
                return done
            attempt += 1
            await self.after_stale(epoch, stale, attempt, deadline)

    async def everywhere(self, method: str, *args: Any) -> list[Any]:
        """``method(*args, epoch)`` on every shard, all at our epoch; answers in shard order.

        Only for idempotent methods: while any shard refuses the epoch (a move
        is under way), the map is refreshed (or the call held) and every shard
        is asked again, so the answers come from one map, never missing what
        is in transit between two shards.
        """
        deadline = time.monotonic() + self.settings.shard_call_timeout_s
        attempt = 0
        while True:
            epoch = self.epoch
            results = await asyncio.gather(
                *(self.invoke(i, method, args, deadline) for i in range(len(self.shards)))
            )
            stale = [r for r in results if isinstance(r, StaleEpoch)]
            if not stale:
                return list(results)
            attempt += 1
            await self.after_stale(epoch, max(stale, key=lambda r: r.epoch), attempt, deadline)

    async def broadcast(self, method: str, *args: Any, timeout_s: float = 30.0) -> list[Any]:
        """``method(*args)`` on every shard of the group, answers decoded, in shard order."""
        return list(
            await asyncio.gather(
                *(self.ask(i, method, *args, timeout_s=timeout_s) for i in range(len(self.shards)))
            )
        )

    async def ping_all(self, timeout_s: float = 2.0) -> list[dict | None]:
        pings = await ping_each(self.shards, timeout_s)
        if None in pings:  # a shard moved node since our topology? Ask once, then ping again.
            await self.refresh(self.epoch)
            pings = await ping_each(self.shards, timeout_s)
        return pings


class ShardRegion(PartitionRouter):
    """The router of profile shards, one per ingress replica; ``identities`` routes
    to identity shards."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "profile")
        self.identities = PartitionRouter(settings, "identity")
        self.on_moved: Callable[[str, str], None] | None = None

    async def start(self, coordinator: Any = None) -> None:
        await super().start(coordinator)
        await self.identities.start(self.coordinator)

    def note_moved(self, old: str, new: str) -> None:
        """Tell ``on_moved`` (the identity cache) that ``old`` was merged into ``new``."""
        if self.on_moved is not None:
            self.on_moved(old, new)

    async def call_for(self, customer_id: str, method: str, *args: Any, follow: bool = True) -> Any:
        """``method(customer_id, *args, epoch)`` on the customer's shard.

        Stale maps are refreshed and the call re-routed; with ``follow`` a
        ``Moved`` answer is followed to the surviving profile.
        """
        deadline = time.monotonic() + self.settings.shard_call_timeout_s
        reroutes = moves = 0
        while True:
            epoch = self.epoch
            shard = self.shard_of(customer_id)
            result = await self.invoke(shard, method, (customer_id, *args), deadline)
            if isinstance(result, StaleEpoch):
                reroutes += 1
                await self.after_stale(epoch, result, reroutes, deadline)
            elif follow and isinstance(result, Moved):
                moves += 1
                if moves > MAX_MOVES:
                    raise Unavailable("profile keeps moving (merges); retry", code="rebalancing")
                self.note_moved(customer_id, result.to)
                customer_id = result.to
            else:
                return result

    # -- what routes use ------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[Event], cached: set[str] | None = None
    ) -> tuple[int, int, list[Event]]:
        """Apply a validated batch: one call per owning shard, all in parallel.

        Events for a profile that was merged away are sent on to the profile
        it went to. ``cached``: profile ids found in the identifier cache;
        events a shard refused because such a profile was erased are returned
        (third item) for the caller to resolve again.
        """
        applied = dups = 0
        erased: list[Event] = []
        pending = list(events)
        hint = sorted(cached or ())
        for _ in range(MAX_MOVES):
            results = await self.scatter(
                "apply_events", pending, _customer_of, hint, send=pack_events
            )
            pending = []
            for group, r in results:
                applied += r["applied"]
                dups += r["duplicates"]
                erased.extend(group[i] for i in r["erased"])
                for i, target in r["moved"]:
                    ev = group[i]
                    self.note_moved(ev.customer_id, target)
                    pending.append(ev._replace(customer_id=target))
            if not pending:
                return applied, dups, erased
        raise Unavailable("profiles keep moving (merges); retry", code="rebalancing")

    async def decide_on(
        self, shard: int, requests: list[Any], deadlines: list[float] | None, timeout_s: float
    ) -> tuple[int, Any]:
        """One decide call for requests all owned by ``shard`` (by our map).

        Returns ``(epoch routed with, answer)``; the answer is a list of
        per-request outcomes or ``StaleEpoch`` for the caller to re-route.
        """
        epoch = self.epoch
        deadline = time.monotonic() + max(timeout_s, 0.001)
        args = (pack_requests(requests), deadlines)
        return epoch, unpack_answers(await self.invoke(shard, "decide_packed", args, deadline))

    async def decide_batch(self, requests: Sequence[Any]) -> list[Any]:
        """Decisions for many requests in request order, following merges."""
        out: list[Any] = [None] * len(requests)
        pending = list(enumerate(requests))
        for _ in range(MAX_MOVES + 1):
            results = await self.scatter(
                "decide_packed", pending, _tagged_customer, None, send=_packed_untagged
            )
            pending = []
            for group, answers in results:
                for (i, req), answer in zip(group, unpack_answers(answers)):
                    if isinstance(answer, Moved):
                        self.note_moved(req.customer_id, answer.to)
                        pending.append((i, _with_customer(req, answer.to)))
                    else:
                        out[i] = answer
            if not pending:
                return out
        raise Unavailable("profiles keep moving (merges); retry", code="rebalancing")


async def ping_each(handles: Sequence[Any], timeout_s: float) -> list[dict | None]:
    """Every actor's ``ping()`` answer, None for one that does not answer in time."""

    async def one(h: Any) -> dict | None:
        try:
            return await asyncio.wait_for(h.ping.remote(), timeout_s)
        except Exception:
            return None

    return list(await asyncio.gather(*(one(h) for h in handles)))


def _actor_of(handle: Any) -> Any:
    """What tells two handles of the same actor apart from another actor's."""
    return getattr(handle, "_actor_id", id(handle))


def _customer_of(item: Any) -> str:
    return item.customer_id


def _tagged_customer(item: tuple[int, Any]) -> str:
    return item[1].customer_id


def _packed_untagged(group: list[tuple[int, Any]]) -> bytes:
    return pack_requests([r for _, r in group])


def _with_customer(req: Any, customer_id: str) -> Any:
    return dataclasses.replace(req, customer_id=customer_id)
