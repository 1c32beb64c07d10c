"""``ProfileShard``: the Ray actor that owns the profiles of some partitions.

The actor is a thin shell that owns concurrency and delegates each job to a
component:

- :class:`~actors.durable.DurableState`: journal, snapshots, recovery, degraded mode;
- :class:`~actors.ownership.Ownership`: the partition map and epoch checks;
- :class:`~actors.profiles.ProfileBook`: profiles and the events that update them;
- :class:`~actors.decisions.DecisionEngine`: catalogue, model, decisions, decision log;
- :class:`~actors.handover.Handover`: profiles merged away to other shards and back;
- :class:`~actors.handoff.ProfileHandoff`: whole partitions moving to another shard.
- :class:`~actors.learning.Learning`: adaptive models, learning from responses.
- :class:`~actors.reporting.ReportBook`: hourly report counters (merged on read).
- :class:`~actors.history.InteractionHistory`: every decision and outcome, on disk.

It is an async actor whose methods do their in-memory work without awaiting
in between, so calls never interleave mid-update and need no locks; that is
also what gives read-your-writes. A call returns only after the journal's
group commit made its changes durable (a keyed decide answered from the
decision log, after the commit that holds that decision). Answers are typed
(:mod:`actors.replies`): a refused call is ``StaleEpoch``, ``ShardUnavailable``
or ``Failed``; a customer merged away is ``Moved``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors import heap
from actors.decide_wire import pack_answers, unpack_requests
from actors.decisions import (
    CatalogActivated,
    DecisionEngine,
    DecisionsMade,
    ModelActivated,
    decisions_made,
)
from actors.durable import DurableState
from actors.handoff import HandoffEndpoints, ProfileHandoff
from actors.handover import (
    HandedOver,
    Handover,
    IdentifiersRepointed,
    MoveDelivered,
    MovesForgotten,
    ProfileMergedIn,
    ProfileMovedOut,
)
from actors.history import InteractionHistory
from actors.learning import Learning, ModelFrozen, ModelsReset, OutcomesTimedOut
from actors.loopwatch import LoopWatch
from actors.metrics import ShardMetrics
from actors.ownership import Ownership
from actors.profiles import EventsApplied, ProfileBook, ProfileErased, unpack_events
from actors.replies import Erased, Expired, Failed, Moved, ShardUnavailable, StaleEpoch
from actors.reporting import FallbacksCounted, ReportBook
from actors.wire import WIRE_METHODS, WireServer
from models.customer.events import Event
from models.customer.profile import Profile
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest
from models.decisioning.segments import (
    MAX_PAGE,
    compile_segment,
    reads_attributes_only,
    segment_page,
)
from models.errors import RtimError, Unavailable
from models.settings import Settings

log = logging.getLogger("rtim.shard")

NAMESPACE = "rtim"
STEP_TIMEOUT_S = 2.0  # a hand-over step waits this long for another shard, then the timer retries

Refused = StaleEpoch | ShardUnavailable


def shard_name(index: int) -> str:
    return f"rtim-shard-{index}"


def shard_dir(data_dir: str, index: int) -> Path:
    return Path(data_dir) / f"shard-{index}"


class ProfileShardImpl(HandoffEndpoints):
    """The shard's behaviour; :data:`ProfileShard` is its Ray actor class."""

    def __init__(
        self,
        index: int,
        settings: dict,
        pmap: dict,
        catalog: dict | None = None,
        model_version: str | None = None,
    ) -> None:
        self.index = index
        self.settings = Settings.from_dict(settings)
        self.ownership = Ownership(index, pmap)
        # Erasure tombstones outlive every replica's cached identifier lookups.
        tombstone_s = 2 * self.settings.identity_cache_ttl_s + 60
        self.profiles = ProfileBook(self.settings.session_gap_s, tombstone_s)
        self.learning = Learning(self.settings.decision_log_size)
        self.reports = ReportBook(self.settings.report_retention_h)
        s = self.settings
        self.history = (
            InteractionHistory(shard_dir(s.data_dir, index) / "history", s.history_file_bytes,
                               s.history_file_s, s.history_retention_days * 86400.0)
            if s.history else None
        )  # fmt: skip
        self.engine = DecisionEngine(
            s, catalog, model_version, self.learning, reports=self.reports, history=self.history
        )
        self.handover = Handover(self.settings.session_gap_s)
        self._deliveries: dict[str, asyncio.Future] = {}  # absorbed id -> delivery in flight
        self.wire: WireServer | None = None  # started by the first wire_address()
        self.handoff = ProfileHandoff(self.ownership, self.profiles, self.engine, self.handover)
        self.durable = DurableState(
            f"shard {index}",
            shard_dir(self.settings.data_dir, index),
            self.settings,
            self,
            {
                EventsApplied: lambda r: self.profiles.replay(r, self.engine.attribute),
                DecisionsMade: self._replay_decisions,
                ProfileErased: self._erase,
                CatalogActivated: lambda r: self.engine.activate_catalog(r.catalog),
                ModelActivated: lambda r: self.engine.activate_model(r.version, strict=False),
                ProfileMovedOut: self._moved_out,
                MoveDelivered: self.handover.delivered,
                IdentifiersRepointed: self.handover.repointed,
                ProfileMergedIn: self._merged_in,
                MovesForgotten: self.handover.forget,
                **self.handoff.handlers(),
                ModelsReset: self.learning.reset,
                ModelFrozen: self.learning.freeze,
                OutcomesTimedOut: lambda r: self.learning.timed_out(
                    r, self.engine.log, self.engine.catalog
                ),
                FallbacksCounted: self.reports.fallbacks,
            },
        )
        self.metrics = ShardMetrics(index)
        self.loop_watch = LoopWatch()
        self.loop_watch_task: asyncio.Task | None = None
        self.durable.journal.observe = self.metrics.committed
        self.started_at = time.time()
        self.slow_s = 0.0  # test hook: artificial delay in decide and events
        self.timer: asyncio.Task | None = None
        self._topology: dict[str, Any] = {}
        self.durable.recover()
        self._history_recovered()

    def _history_recovered(self) -> None:
        if self.history is not None and self.durable.recovered:
            self.history.recovered()

    # -- what DurableState needs --------------------------------------------------------

    def reset_state(self) -> None:
        if self.history is not None:
            self.history.begin_recovery(0.0)
        self.profiles.reset()
        self.engine.reset()
        self.handover.reset()
        self.handoff.reset()
        self.learning.reset_state()
        self.reports.reset()

    def load_snapshot(self, state: dict) -> None:
        if self.history is not None:
            self.history.begin_recovery(float(state.get("taken_at") or 0.0))
        self.profiles.load_snapshot(state)
        self.engine.load_snapshot(state)
        self.handover.load_snapshot(state)
        self.handoff.load_snapshot(state)
        self.learning.load_snapshot(state, self.engine.log)
        self.reports.load_snapshot(state)

    def snapshot_sync(self) -> Callable[[], None] | None:
        """The history rows so far, flushed; the function fsyncs them (the journal
        compacts behind the snapshot, and recovery rewrites rows only after it)."""
        return None if self.history is None else self.history.sync_later()

    def snapshot_state(self) -> dict:
        return {
            "v": 1,
            "shard": self.index,
            "taken_at": time.time(),
            **self.profiles.snapshot(),
            **self.engine.snapshot(),
            **self.handover.snapshot(),
            **self.handoff.snapshot(),
            **self.learning.snapshot(),
            **self.reports.snapshot(),
        }

    def _replay_decisions(self, rec: DecisionsMade) -> None:
        for p in self.engine.replay(rec, self.profiles.get_or_new):
            self.profiles.store.put(p)

    def _moved_out(self, rec: ProfileMovedOut) -> None:
        self.handover.move_out(self.profiles.store, rec)
        if rec.decisions:
            self.engine.release(rec.absorbed)

    def _merged_in(self, rec: ProfileMergedIn) -> None:
        self.handover.merge_in(self.profiles.store, rec)
        if rec.decisions:
            self.engine.adopt(rec.decisions, rec.survivor)

    def _erase(self, rec: ProfileErased, history: bool = True) -> bool:
        """Erase in memory (and, with ``history``, the history files: the replay's way)."""
        deleted = self.profiles.erase(rec)
        return bool(self.engine.erase(rec.customer_id, history)) or deleted

    async def _erase_history(self, customer_id: str) -> int:
        """The customer's history rows, erased in a thread (the loop keeps serving)."""
        return 0 if self.history is None else await self.history.erase_async(customer_id)

    async def _erase_rows_left(self, customer_id: str) -> bool | Failed | ShardUnavailable:
        """A customer known here only to the history files (a partition that moved
        away, an evicted decision): erase those rows; False if there are none.

        The erasure is journalled (and applied in memory, in case an event for
        the id came while the files were read) before the files are rewritten,
        so that recovery erases the rows too and replays in the same order.
        Nothing is journalled for a customer no file names.
        """
        if self.history is None or not await self.history.mentions_async(customer_id):
            return False
        rec = ProfileErased(customer_id, time.time())
        self._erase(rec, history=False)
        failed = await self._record(rec)
        if failed:
            return failed
        await self._erase_history(customer_id)
        self.durable.note_erasure()
        return True

    # -- guards and timer -----------------------------------------------------------------

    def _refuse(self, epoch: int, *customer_ids: str) -> Refused | None:
        """Why this shard will not take the call, or None."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        return self.ownership.check(epoch, *customer_ids)

    def _recently_erased(self, customer_id: str) -> bool:
        return self.profiles.recently_erased(customer_id) or self.handoff.recently_erased(
            customer_id
        )

    def _ensure_timer(self) -> None:
        if self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.create_task(self._timer_loop())
            self.loop_watch_task = loop.create_task(self.loop_watch.run())

    async def _timer_loop(self) -> None:
        merged_at = pruned_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            if time.time() - merged_at >= self.settings.learning_merge_interval_s:
                merged_at = time.time()
                await self._merge_learning()
            self.metrics.flush(len(self.profiles.store), self.loop_watch.take_pending())
            await self.expire_outcomes()
            recovered = self.durable.recovered
            self.durable.tick()
            if not recovered:
                self._history_recovered()
            if self.history is not None and time.time() - pruned_at >= 60.0:
                pruned_at = time.time()
                self.history.prune(pruned_at)
            self.profiles.prune(time.time())
            self.reports.prune()
            if self.durable.degraded is None and self.durable.recovered:
                for absorbed in list(self.handover.pending):
                    await self._deliver(absorbed)
                for absorbed in list(self.handover.unrepointed):
                    await self._repoint(absorbed)

    async def _merge_learning(self) -> None:
        """Pull every other shard's evidence and decide with the sum (see actors/learning.py)."""
        if self.engine.catalog.learning is None and not self.learning.models.local:
            return
        try:
            peers = [h for i, h in enumerate((await self._topo())["shards"]) if i != self.index]
            exports = await asyncio.wait_for(
                asyncio.gather(*(h.learning_evidence.remote() for h in peers)), STEP_TIMEOUT_S
            )
        except Exception as exc:  # a peer restarting: keep the last merge, retry next round
            log.warning("shard %d: learning merge skipped: %s", self.index, exc)
            return
        self.learning.merge_peers(list(exports))
        self.learning.models.merged_at = time.time()
        self.metrics.model_update("learning_merge")

    async def _topo(self) -> dict[str, Any]:
        """Peer and identity shard handles, from the coordinator (the one directory).

        Bounded like every step of a hand-over: a coordinator that does not
        answer (restarting) fails the caller's step, which its timer retries.
        """
        if not self._topology:
            from actors.coordinator import COORDINATOR_NAME

            coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
            self._topology = await asyncio.wait_for(coordinator.topology.remote(), STEP_TIMEOUT_S)
        return self._topology

    async def _peer(self, index: int) -> Any:
        if index >= len((await self._topo())["shards"]):
            self._topology = {}  # shards were added since we asked
        return (await self._topo())["shards"][index]

    async def _repoint_identifiers(self, absorbed: str, survivor: str) -> bool:
        """Repoint on every identity shard at one identity-map epoch (none missed in transit).

        A refusal (a stale map: identity partitions moved) forgets the cached
        topology; the caller tries again (the shard's timer, or the next call).
        """
        topo = await self._topo()
        epoch = topo["identity_map"]["epoch"]
        calls = [h.repoint_profile.remote(absorbed, survivor, epoch)
                 for h in topo["identity_shards"]]  # fmt: skip
        results = await asyncio.wait_for(asyncio.gather(*calls), STEP_TIMEOUT_S)
        if any(isinstance(r, StaleEpoch) for r in results):
            self._topology = {}
        return all(isinstance(r, list) for r in results)

    async def _repoint(self, absorbed: str) -> bool:
        try:
            return await self.handover.repoint(absorbed, self.durable, self._repoint_identifiers)
        except Unavailable:
            return False

    async def _send_merge(
        self, survivor: str, absorbed: str, blob: bytes, decisions: list | None
    ) -> Any:
        index = self.ownership.owner_of(survivor)
        epoch = self.ownership.epoch
        if index == self.index:
            return await self.merge_in(survivor, absorbed, blob, epoch, decisions)
        peer = await self._peer(index)
        return await asyncio.wait_for(
            peer.merge_in.remote(survivor, absorbed, blob, epoch, decisions), STEP_TIMEOUT_S
        )

    async def _deliver(self, absorbed: str) -> bool:
        """Deliver a pending hand-over; callers at the same time share one delivery."""
        running = self._deliveries.get(absorbed)
        if running is None:
            running = asyncio.ensure_future(self._deliver_once(absorbed))
            self._deliveries[absorbed] = running
            running.add_done_callback(lambda _: self._deliveries.pop(absorbed, None))
        return await asyncio.shield(running)

    async def _deliver_once(self, absorbed: str) -> bool:
        try:
            return await self.handover.deliver(absorbed, self.durable, self._send_merge)
        except Unavailable:
            return False

    async def _record(self, *records: Any) -> ShardUnavailable | None:
        try:
            await self.durable.record(*records)
        except Unavailable as exc:
            return ShardUnavailable(exc.message)
        return None

    # -- control ------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        self._ensure_timer()
        return {
            "shard": self.index,
            "epoch": self.ownership.epoch,
            "profiles": len(self.profiles.store),
            "partitions": len(self.ownership.owned),
            "outbox": sorted(self.handoff.outbox),
            "degraded": self.durable.degraded,
            "model_error": self.engine.model_error,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    async def wire_address(self) -> dict[str, str] | None:
        """This shard's socket for same-node replicas (:mod:`actors.wire`); None when off."""
        if not self.settings.shard_wire:
            return None
        if self.wire is None:
            self.wire = WireServer(
                f"shard-{self.index}",
                {name: getattr(self, name) for name in WIRE_METHODS},
            )
        return {"path": await self.wire.start(), "node": ray.get_runtime_context().get_node_id()}

    async def stats(self) -> dict[str, Any]:
        return {
            **(await self.ping()),
            "events_applied": self.profiles.events_applied,
            "duplicates": self.profiles.duplicates,
            "memory_bytes": self.profiles.store.memory_bytes(),
            "disk_bytes": await self.durable.disk_bytes(),
            "journal_commits": self.durable.journal.commits,
            "recovery": {"profiles": len(self.profiles.store), **self.durable.recovery},
            "decisions": self.engine.decisions,
            "decision_log": len(self.engine.log),
            "report_entries": len(self.reports.counters),
            "history_rows": self.history.rows if self.history is not None else 0,
            "history_dropped": self.history.dropped if self.history is not None else 0,
            # Ray runs async actors on uvloop when it is installed (it is a dependency).
            "event_loop": type(asyncio.get_running_loop()).__module__,
            "gc_frozen": gc.get_freeze_count(),  # the start-up heap (actors/heap.py)
            "loop": self.loop_watch.stats(),  # the event loop's pauses (actors/loopwatch.py)
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def customer_ids(self) -> list[str]:
        return list(self.profiles.store.ids())

    async def segment_members(
        self, rule: dict | None, after: str | None, limit: int, profiles: bool = False
    ) -> dict[str, Any] | Failed:
        """One page of this shard's customers matching a segment rule (None: all).

        With ``profiles`` the page also carries each member's profile view (exports).
        """
        try:
            test = compile_segment(rule)
        except RtimError as exc:
            return Failed.of(exc)
        ids, cursor = segment_page(
            self.profiles.store, test, after, max(1, min(limit, MAX_PAGE)), time.time(),
            reads_attributes_only(rule),
        )  # fmt: skip
        page: dict[str, Any] = {"ids": ids, "next": cursor}
        if profiles:
            page["profiles"] = [self.profiles.view(cid) for cid in ids]
        return page

    async def set_slow(self, seconds: float) -> None:
        """Test hook: delay every decision and event batch by ``seconds``."""
        self.slow_s = seconds

    async def snapshot(self) -> dict[str, Any] | ShardUnavailable:
        """Write a snapshot now and compact the journal behind it."""
        try:
            result = await self.durable.snapshot()
        except Unavailable as exc:
            return ShardUnavailable(exc.message)
        return {"shard": self.index, "profiles": len(self.profiles.store), **result}

    # -- profiles -------------------------------------------------------------------------

    async def apply_events(
        self, events: list[Event] | bytes, cached: list[str] | None, epoch: int
    ) -> dict[str, Any] | Refused:
        """Apply a batch of events owned by this shard, durably, in order.

        ``events`` may come msgpack-packed (a list of Event field lists): the
        ingress packs once, and the same bytes go into the journal. Events for
        a profile merged away are not applied; the answer's ``moved`` lists
        ``[index, survivor]`` for each, for the caller to send on. ``cached``
        names the profile ids the caller found in its identifier cache; events
        for such an id that was erased are not applied either (``erased``
        lists their indexes): the caller must resolve their identifiers again.
        """
        packed = events if isinstance(events, bytes) else None
        batch = unpack_events(events) if packed is not None else list(events)
        refused = self._refuse(epoch, *(ev.customer_id for ev in batch))
        if refused:
            return refused
        self._ensure_timer()
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
            refused = self._refuse(epoch, *(ev.customer_id for ev in batch))  # moved meanwhile?
            if refused:
                return refused
        now = time.time()
        moved = self.handover.moved
        forward = [[i, moved[ev.customer_id]] for i, ev in enumerate(batch)
                   if ev.customer_id in moved]  # fmt: skip
        absorbed = {batch[i].customer_id for i, _ in forward}
        erased = [i for i, ev in enumerate(batch)
                  if cached and ev.customer_id in cached
                  and self._recently_erased(ev.customer_id)]  # fmt: skip
        if forward or erased:
            gone = {i for i, _ in forward} | set(erased)
            batch = [ev for i, ev in enumerate(batch) if i not in gone]
            packed = None
        responses: dict[tuple[str, str | None], int] = {}
        applied, dups = self.profiles.apply(batch, now, self._attribute_counted(responses))
        self.metrics.applied(applied, responses, self.engine.catalog)
        if applied:
            self.durable.append(EventsApplied(now, packed or [list(ev) for ev in batch]))
            self.engine.flush_history()
        # Pure duplicates commit too: that waits for any in-flight group holding
        # the originals, so nothing is acknowledged before it is durable.
        failed = await self._record()
        if failed:
            return failed
        # Events sent on to a survivor must find the absorbed profile merged there,
        # seen event ids included, or a retried event would count twice: wait for
        # a hand-over still being delivered (its intent is durable: committed above),
        # at most one step's time; a delivery that takes longer goes on regardless.
        waiting = absorbed & self.handover.pending.keys()
        if waiting:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(self._deliver(cid) for cid in waiting)), STEP_TIMEOUT_S
                )
        return {"applied": applied, "duplicates": dups, "moved": forward, "erased": erased}

    def _attribute_counted(self, responses: dict) -> Callable[[Event], Event]:
        """The engine's attribution, tallying live responses by (outcome, offer) for metrics."""
        attribute = self.engine.attribute

        def counted(ev: Event) -> Event:
            ev = attribute(ev)
            if ev.type == "response":
                key = (ev.attributes.get("outcome"), ev.offer_id)
                responses[key] = responses.get(key, 0) + 1
            return ev

        return counted

    async def get_profile(self, customer_id: str, epoch: int) -> dict | Moved | Refused | None:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        return self.handover.moved_to(customer_id) or self.profiles.view(customer_id)

    async def delete_profile(self, customer_id: str, epoch: int) -> bool | Refused:
        """Erase a customer's profile, decisions and tombstones; True if anything was held."""
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        erased = ProfileErased(customer_id, time.time())
        deleted = self._erase(erased, history=False)
        unmove = MovesForgotten(customer_id)
        unmoved = self.handover.forget(unmove)
        if not (deleted or unmoved):
            return await self._erase_rows_left(customer_id)
        self.durable.append(erased)
        if unmoved:
            self.durable.append(unmove)
        gone = [customer_id]
        for a in unmoved:  # profiles merged into the erased one count as erased too
            if a != customer_id:
                also = ProfileErased(a, erased.ts)
                self._erase(also, history=False)
                self.durable.append(also)
                gone.append(a)
        failed = await self._record()
        if failed:
            return failed
        # Journalled first: events for the same id that arrive meanwhile come
        # after the erasure, in memory, in the journal and in the files.
        for cid in gone:
            await self._erase_history(cid)
        self.durable.note_erasure()
        return True

    # -- decisions ------------------------------------------------------------------------

    async def decide(
        self,
        requests: list[DecideRequest],
        deadlines: list[float] | None,
        epoch: int,
        encoded: dict[int, bytes] | None = None,
    ) -> list[DecisionRecord | Moved | Expired | Erased] | Refused | Failed:
        """Decide for customers of this shard, with one model run for all of them.

        ``deadlines`` (epoch seconds, one per request): a request whose
        deadline has passed was already answered with the fallback by the
        caller, so it gets ``Expired`` and nothing is recorded. ``encoded``:
        see :func:`~actors.decisions.decisions_made` (the packed answer reuses
        the journal's bytes).
        """
        refused = self._refuse(epoch, *(r.customer_id for r in requests))
        if refused:
            return refused
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
            refused = self._refuse(epoch, *(r.customer_id for r in requests))
            if refused:
                return refused
        now = time.time()
        answers: list[DecisionRecord | Moved | Expired | Erased] = []
        live: list[int] = []
        profiles: dict[str, tuple[Profile, bytes]] = {}  # the profile, as stored before
        items: list[tuple[Profile, DecideRequest]] = []
        packed: list[bytes] = []
        keyed: dict[tuple[str, str], int] = {}  # a keyed request's first index in this call
        repeats: list[tuple[int, int]] = []  # (index, index of the same keyed request)
        for i, req in enumerate(requests):
            cid = req.customer_id
            moved = self.handover.moved_to(cid)
            key = None if req.idempotency_key is None else (cid, req.idempotency_key)
            if moved is not None:
                answers.append(moved)
            elif req.via_cache and self._recently_erased(cid):
                answers.append(Erased(cid))
            elif (before := self.engine.decided_before(req)) is not None:
                answers.append(before)  # a repeat of a keyed request: nothing new is recorded
            elif key is not None and key in keyed:  # repeated within this call: one decision
                answers.append(Expired())  # replaced below
                repeats.append((i, keyed[key]))
            elif deadlines is not None and deadlines[i] is not None and deadlines[i] < now:
                answers.append(Expired())
            else:
                answers.append(Expired())  # replaced below
                live.append(i)
                if key is not None:
                    keyed[key] = i
                held = profiles.get(cid)
                if held is None:
                    held = profiles[cid] = self.profiles.checkout(cid)
                items.append((held[0], req))
                packed.append(held[1])
        try:
            records = self.engine.decide(items, now, packed)
        except RtimError as exc:
            return Failed.of(exc)
        for i, record in zip(live, records):
            answers[i] = record
        for i, first in repeats:
            answers[i] = answers[first]
        if records:
            self.metrics.decided(records, self.engine.catalog)
            for cid in {r.customer_id for r in records if r.impressions}:
                self.profiles.store.put(profiles[cid][0])
            self.durable.append(decisions_made(now, records, encoded))
            self.engine.flush_history()  # to the OS before the answer: kill -9 loses no row
        # Repeats of a keyed request commit too: the decision they answer with may
        # still be in a group commit in flight (its first call is awaiting it), and
        # this waits for that group, so nothing is acknowledged before it is durable.
        # With nothing appended or in flight it returns at once.
        failed = await self._record()
        if failed:
            return failed
        return answers

    async def decide_packed(
        self, requests: bytes, deadlines: list[float] | None, epoch: int
    ) -> bytes | Refused | Failed:
        """:meth:`decide` with msgpack requests and answers (:mod:`actors.decide_wire`)."""
        encoded: dict[int, bytes] = {}
        answers = await self.decide(unpack_requests(requests), deadlines, epoch, encoded)
        return pack_answers(answers, encoded)

    async def record_fallbacks(self, records: list[DecisionRecord]) -> int:
        """Fallback answers an ingress gave for customers of this shard (history rows).

        They arrive a little after the answer: one for a customer erased
        meanwhile is dropped, not written back.
        """
        kept = [r for r in records if not self._recently_erased(r.customer_id)]
        self.engine.note_fallbacks(kept)
        return len(kept)

    async def history_page(
        self, kind: str, since: float, until: float, cursor: list | None, limit: int
    ) -> dict[str, Any]:
        """One page of this shard's interaction history (``InteractionHistory.page``)."""
        if self.history is None:
            return {"rows": [], "next": None}
        self.history.flush()  # here, not in the thread: appends run on this loop
        rows, nxt = await asyncio.to_thread(self.history.page, kind, since, until, cursor, limit)
        return {"rows": rows, "next": nxt}

    async def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        return self.engine.entry(decision_id)

    async def decisions_of(self, customer_id: str, epoch: int) -> list[dict] | Refused:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        return self.engine.log.for_customer(customer_id)

    # -- reports (actors/reporting.py) --------------------------------------------------

    async def report_counters(self, since: float, until: float) -> dict[str, list]:
        """This shard's report counters of the buckets in ``[since, until)``."""
        self._ensure_timer()
        return self.reports.query(since, until)

    async def count_fallbacks(self, batch_id: str, rows: list[list]) -> int | ShardUnavailable:
        """Count an ingress replica's fallback answers (once per ``batch_id``); journalled."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        rec = FallbacksCounted(batch_id, rows)
        if self.reports.fallbacks(rec):
            self.durable.append(rec)
        failed = await self._record()
        return failed or sum(int(r[3]) for r in rows)

    # -- merges (identity resolution) -----------------------------------------------------

    async def move_out(
        self, absorbed: str, survivor: str, epoch: int
    ) -> HandedOver | Moved | Refused:
        """Hand a profile over to ``survivor`` (merge): the saga of ``actors/handover.py``.

        The first hand-over of a profile wins; it is journalled before any
        step runs, so a crash leaves it to be completed by the timer. Asked
        again for the same survivor, it resumes the steps and answers what is
        done; asked for another survivor, it answers ``Moved`` to the winner.
        """
        refused = self._refuse(epoch, absorbed)
        if refused:
            return refused
        self._ensure_timer()
        state = self.handover.state_of(absorbed)
        if state is not None and state.to != survivor:
            return Moved(state.to)
        if state is None:
            blob = self.profiles.store.blob(absorbed)
            decisions = self.engine.decisions_of(absorbed) if blob else None
            rec = ProfileMovedOut(absorbed, survivor, blob, decisions or None)
            self._moved_out(rec)
            failed = await self._record(rec)
            if failed:
                return failed
        delivered = await self._deliver(absorbed)
        repointed = await self._repoint(absorbed)
        return HandedOver(survivor, delivered, repointed)

    async def merge_in(
        self,
        survivor: str,
        absorbed: str,
        blob: bytes,
        epoch: int,
        decisions: list | None = None,
    ) -> bool | Moved | Refused:
        """Fold an absorbed profile into ``survivor`` (idempotent); True when durable."""
        refused = self._refuse(epoch, survivor)
        if refused:
            return refused
        moved = self.handover.moved_to(survivor)
        if moved is not None:
            return moved
        rec = ProfileMergedIn(survivor, absorbed, blob, time.time(), decisions)
        self._merged_in(rec)
        failed = await self._record(rec)
        return failed or True

    async def forget_moves(self, customer_id: str) -> int:
        """An erased customer's tombstones go; the profiles merged into it count as erased.

        A replica may still have an absorbed id (say ``anon-…`` of a cookie)
        in its cache: the erasure tombstone makes it resolve the cookie again.
        """
        rec = MovesForgotten(customer_id)
        absorbed = [a for a in self.handover.forget(rec) if a != customer_id]
        now = time.time()
        await self._erase_rows_left(customer_id)  # rows a partition that moved away left here
        if not absorbed:
            return 0
        erased = [ProfileErased(a, now) for a in absorbed]
        for e in erased:
            self._erase(e, history=False)
        await self._record(rec, *erased)
        for e in erased:
            await self._erase_history(e.customer_id)
        return len(absorbed)

    # -- partition moves (actors/handoff.py) ---------------------------------------------

    def _map_changed(self) -> None:
        self._topology = {}  # a new epoch may name new peer handles (a shard moved node)

    # -- catalogue and model ----------------------------------------------------------------

    async def set_catalog(self, data: dict) -> dict[str, Any] | ShardUnavailable | Failed:
        """Activate a (validated) catalogue; durable before it is acknowledged."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        try:
            catalog = self.engine.activate_catalog(data)
        except RtimError as exc:
            return Failed.of(exc)
        failed = await self._record(CatalogActivated(data))
        if failed is None:
            self.metrics.model_update("catalog_activation")
        return failed or {"shard": self.index, "catalog_version": catalog.version}

    async def set_model(self, version: str) -> dict[str, Any] | ShardUnavailable | Failed:
        """Load and activate a model version from the registry."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        try:
            active = self.engine.activate_model(version)
        except RtimError as exc:
            return Failed.of(exc)
        failed = await self._record(ModelActivated(active))
        if failed is None:
            self.metrics.model_update("model_activation")
        return failed or {"shard": self.index, "model_version": active}

    # -- adaptive models --------------------------------------------------------------------

    async def expire_outcomes(self, now: float | None = None) -> int:
        """Learn decisions without an outcome after ``learning.negative_after`` as negatives."""
        if self.durable.degraded is not None:
            return 0
        expired = self.learning.expire(now or time.time(), self.engine.log, self.engine.catalog)
        if expired:
            await self._record(OutcomesTimedOut(expired))
        return len(expired)

    async def learning_evidence(self) -> dict[str, dict]:
        """This shard's own evidence, for the other shards' merge."""
        self._ensure_timer()
        return self.learning.export()

    async def merge_learning_now(self) -> int:
        """Merge the other shards' evidence now (tests, benchmarks); the number of models."""
        await self._merge_learning()
        return len(self.learning.models.merged)

    async def adaptive_models(self, model: str | None = None) -> dict[str, Any]:
        """Every adaptive model's summary (local + merged evidence), and the counters."""
        self._ensure_timer()
        return {
            "shard": self.index,
            "models": self.learning.summaries(self.engine.catalog, model),
            "counts": dict(self.learning.counts),
            "merged_at": self.learning.models.merged_at,
        }

    async def reset_model(self, model: str | None) -> dict[str, Any] | ShardUnavailable:
        """Forget a model's evidence (None: all); journalled."""
        rec = ModelsReset(model)
        self.learning.reset(rec)
        failed = await self._record(rec)
        return failed or {"shard": self.index, "reset": model or "all"}

    async def freeze_model(self, model: str, frozen: bool) -> dict[str, Any] | ShardUnavailable:
        """Stop (or resume) learning for a model; journalled."""
        rec = ModelFrozen(model, frozen)
        self.learning.freeze(rec)
        failed = await self._record(rec)
        return failed or {"shard": self.index, "model": model, "frozen": frozen}

    async def export_model(self, model: str | None) -> dict[str, dict]:
        """The merged evidence (every shard's, as of the last merge) of one model or all."""
        merged = self.learning.models.merged
        keys = [model] if model is not None else list(merged)
        return {k: merged[k].to_builtins() for k in keys if k in merged}

    async def versions(self) -> dict[str, Any]:
        return {
            "catalog_version": self.engine.catalog.version,
            "model_version": self.engine.model_version,
        }


@ray.remote
class ProfileShard(ProfileShardImpl):
    """The Ray actor: :class:`ProfileShardImpl`, its start-up heap frozen (``actors/heap.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        heap.settle()
