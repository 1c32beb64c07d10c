"""``ProfileShard``: the Ray actor that owns the profiles of some partitions.

Each shard is an async actor. Its methods do their in-memory work without
awaiting in between, so calls never interleave mid-update and need no locks;
that is also what gives read-your-writes: an event batch is applied before
the call that carries it returns, and a later call for the same customer runs
after it on the same actor.

Durability: every state change is appended to the shard's journal and the
call returns only after the journal's group commit made it durable. On
(re)start the shard rebuilds its state from the newest snapshot plus the
journal tail before it serves anything. If the data directory cannot be
written the shard answers ``{"unavailable": reason}`` and never acknowledges.

Ownership: the shard checks that it owns every customer it is asked about. A
caller routing with an old partition map gets ``{"stale": epoch}`` back and
must refresh its map and retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import ray

from actors.journal import Journal
from models.catalog import Catalog, load_catalog
from models.decision import DecideRequest, decide_many
from models.decision_log import DecisionLog
from models.errors import RtimError
from models.events import Event
from models.identity import merge_profiles
from models.partitioning import PartitionMap, partition_of
from models.profile import Profile
from models.settings import Settings
from models.store import ProfileStore

log = logging.getLogger("rtim.shard")

NAMESPACE = "rtim"
SNAPSHOT_VERSION = 1
ERASURE_SNAPSHOT_DELAY_S = 5.0  # an erasure reaches the disk within about this long


def shard_name(index: int) -> str:
    return f"rtim-shard-{index}"


def shard_dir(data_dir: str, index: int) -> Path:
    return Path(data_dir) / f"shard-{index}"


class ProfileShardImpl:
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
        self.store = ProfileStore(self.settings.session_gap_s)
        self.log = DecisionLog(self.settings.decision_log_size)
        # Start from what the coordinator says is active; the journal may hold
        # a newer activation, which recovery applies on top.
        self.catalog: Catalog = load_catalog(catalog or self.settings.catalog)
        self.model_error: str | None = None
        try:
            self.scorer, self.model_version = load_model(
                self.settings, model_version or self.settings.model_version, self.catalog
            )
        except RtimError as exc:
            # Never crash-loop on a bad model file: decide with the prior
            # scorer and say so in ping/readyz until a good model is activated.
            self.model_error = f"model {model_version!r} failed to load: {exc.message}"
            log.error("shard %s: %s", index, self.model_error)
            from models.scoring import PriorScorer

            self.scorer = PriorScorer()
            self.model_version = self.scorer.version
        self.decisions = 0
        self._set_map(pmap)
        self.started_at = time.time()
        self.events_applied = 0
        self.duplicates = 0
        self.degraded: str | None = None
        self.snapshot_task: asyncio.Task | None = None
        self.last_snapshot = time.monotonic()
        self.recovery: dict[str, Any] = {}
        self.slow_s = 0.0  # test hook: artificial delay in decide
        self.erasures_pending = 0
        self.recovered = False
        self.moved: dict[str, str] = {}  # merged-away profile -> the profile it went to
        self.pending_moves: dict[str, list] = {}  # absorbed -> [survivor, blob] not yet merged
        self.timer: asyncio.Task | None = None
        self.journal = Journal(
            shard_dir(self.settings.data_dir, index),
            self.settings.fsync,
            self.settings.fsync_interval_s,
        )
        self._recover()

    # -- state on disk ------------------------------------------------------------

    def _recover(self) -> None:
        started = time.monotonic()
        self.store = ProfileStore(self.settings.session_gap_s)
        self.log = DecisionLog(self.settings.decision_log_size)
        self.moved, self.pending_moves = {}, {}
        try:
            state, records = self.journal.recover()
            if state is not None:
                self._load_snapshot(state)
            replayed = 0
            for rec in records:
                self._replay(rec)
                replayed += 1
        except OSError as exc:
            self.degraded = f"data directory unusable: {exc.strerror or exc} ({exc.filename})"
            log.error("shard %s: %s", self.index, self.degraded)
            return
        self.recovered = True
        self.degraded = None
        self.recovery = {
            "profiles": len(self.store),
            "replayed_records": replayed,
            "seconds": round(time.monotonic() - started, 3),
        }
        if replayed or state is not None:
            log.warning("shard %s recovered %s", self.index, self.recovery)

    def _load_snapshot(self, state: dict) -> None:
        for cid, blob in state["profiles"].items():
            self.store.put_blob(cid, blob)
        self.log.load(state.get("decisions", []))
        self.moved.update(state.get("moved", {}))
        self.pending_moves.update(state.get("pending_moves", {}))
        if state.get("catalog"):
            self._activate_catalog(state["catalog"])
        if state.get("model_version"):
            self._activate_model(state["model_version"])

    def _replay(self, rec: list) -> None:
        kind = rec[1]
        if kind == "ev":
            now, events = rec[2], rec[3]
            if isinstance(events, bytes):
                events = msgpack.unpackb(events, raw=False)
            self.store.apply_events([Event(*e) for e in events], now, self._attribute)
        elif kind == "dec":
            self._record_decisions(rec[2], rec[3])
        elif kind == "del":
            self.store.delete(rec[2])
            self.log.erase(rec[2])
        elif kind == "cat":
            self._activate_catalog(rec[2])
        elif kind == "mdl":
            self._activate_model(rec[2])
        elif kind == "move":
            self._move_out(rec[2], rec[3], rec[4])
        elif kind == "moved_ack":
            self.pending_moves.pop(rec[2], None)
        elif kind == "merge":
            self._merge_in(rec[2], rec[3], rec[4], rec[5])
        elif kind == "unmove":
            self._forget_moves(rec[2])

    def _activate_catalog(self, data: dict) -> None:
        catalog = load_catalog(data)
        if catalog.version != self.catalog.version:
            self.catalog = catalog

    def _activate_model(self, version: str) -> None:
        if version != self.model_version:
            try:
                self.scorer, self.model_version = load_model(self.settings, version, self.catalog)
            except RtimError as exc:  # the file changed since it was activated
                self.model_error = f"model {version!r} failed to load: {exc.message}"
                log.error("shard %s: %s", self.index, self.model_error)
                return
            self.model_error = None

    def _snapshot_state(self) -> dict:
        return {
            "v": SNAPSHOT_VERSION,
            "lsn": self.journal.lsn,
            "shard": self.index,
            "taken_at": time.time(),
            "profiles": dict(self.store.items()),
            "decisions": self.log.entries(),
            "catalog": self.catalog.to_dict(),
            "model_version": self.model_version,
            "moved": self.moved,
            "pending_moves": self.pending_moves,
        }

    def _ensure_timer(self) -> None:
        """Start the background loop that takes snapshots when they are due."""
        if self.timer is None:
            self.timer = asyncio.get_running_loop().create_task(self._timer_loop())

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            idle = self.snapshot_task is None or self.snapshot_task.done()
            if not self.recovered:
                self._recover()  # the data directory was unusable at start: try again
            elif self.degraded is not None and idle:
                # A failed write left memory ahead of the disk; a snapshot
                # saves all of it and clears the failure once the disk takes
                # writes again.
                self.snapshot_task = asyncio.get_running_loop().create_task(self.snapshot())
            elif self.degraded is None:
                self._maybe_snapshot()
                for absorbed in list(self.pending_moves):
                    await self._push(absorbed)

    async def snapshot(self) -> dict[str, Any]:
        """Write a snapshot now and compact the journal behind it."""
        if not self.recovered:
            return {"unavailable": self.degraded or "not recovered"}
        # Capture state and rotate in one step (no await between): the
        # snapshot then covers exactly the records with LSN <= its own.
        upto = self.journal.rotate()
        state = self._snapshot_state()
        started = time.monotonic()
        try:
            size = await asyncio.to_thread(self.journal.write_snapshot, upto, state)
        except OSError as exc:
            self.degraded = f"snapshot failed: {exc.strerror or exc}"
            return {"unavailable": self.degraded}
        self.last_snapshot = time.monotonic()
        if self.degraded is not None:
            # Storage had failed; memory is now safely on disk again. Leave
            # the degraded state only once a journal write goes through too.
            self.journal.failed = None
            self.journal.append("probe")
            try:
                await self.journal.commit()
            except RtimError as exc:
                self.degraded = exc.message
                return {"unavailable": self.degraded}
            self.degraded = None
        return {
            "shard": self.index,
            "bytes": size,
            "profiles": len(state["profiles"]),
            "seconds": round(time.monotonic() - started, 3),
        }

    def _maybe_snapshot(self) -> None:
        age = time.monotonic() - self.last_snapshot
        due = age >= self.settings.snapshot_interval_s
        big = self.journal.bytes_written >= self.settings.snapshot_journal_bytes
        erased = self.erasures_pending and age >= ERASURE_SNAPSHOT_DELAY_S
        if (due or big or erased) and (self.snapshot_task is None or self.snapshot_task.done()):
            self.erasures_pending = 0
            self.journal.bytes_written = 0
            self.last_snapshot = time.monotonic()
            self.snapshot_task = asyncio.get_running_loop().create_task(self.snapshot())

    async def _commit(self) -> dict[str, Any] | None:
        """Make appended records durable; an error dict when that failed."""
        try:
            await self.journal.commit()
        except Exception as exc:
            self.degraded = str(getattr(exc, "message", exc))
            log.error("shard %s: %s", self.index, self.degraded)
            return {"unavailable": self.degraded}
        self._maybe_snapshot()
        return None

    # -- routing ------------------------------------------------------------------

    def _set_map(self, pmap: dict) -> None:
        m = PartitionMap(pmap["epoch"], tuple(pmap["owners"]), pmap["shards"])
        self.epoch = m.epoch
        self.partitions = m.partitions
        self.owners = m.owners
        self.owned = m.partitions_of(self.index)

    def _owns(self, customer_id: str) -> bool:
        return partition_of(customer_id, self.partitions) in self.owned

    def _refuse(self, epoch: int, *customer_ids: str) -> dict[str, Any] | None:
        """Why this shard will not take the call, or None."""
        if self.degraded:
            return {"unavailable": self.degraded}
        if epoch != self.epoch or not all(self._owns(c) for c in customer_ids):
            return {"stale": self.epoch}
        return None

    # -- control ------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        self._ensure_timer()
        return {
            "shard": self.index,
            "epoch": self.epoch,
            "profiles": len(self.store),
            "degraded": self.degraded,
            "model_error": self.model_error,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    async def stats(self) -> dict[str, Any]:
        return {
            **(await self.ping()),
            "events_applied": self.events_applied,
            "duplicates": self.duplicates,
            "memory_bytes": self.store.memory_bytes(),
            "disk_bytes": await asyncio.to_thread(self.journal.disk_bytes),
            "journal_commits": self.journal.commits,
            "recovery": self.recovery,
            "decisions": self.decisions,
            "decision_log": len(self.log),
            # Ray runs async actors on uvloop when it is installed (it is a dependency).
            "event_loop": type(asyncio.get_running_loop()).__module__,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def customer_ids(self) -> list[str]:
        return list(self.store.ids())

    async def set_slow(self, seconds: float) -> None:
        """Test hook: delay every decision and event batch by ``seconds``."""
        self.slow_s = seconds

    # -- profiles -------------------------------------------------------------------

    async def apply_events(self, events: list[Event] | bytes, epoch: int) -> dict[str, Any]:
        """Apply a batch of events owned by this shard, durably, in order.

        ``events`` may come msgpack-packed (a list of Event field lists): the
        ingress packs once, and the same bytes go into the journal.
        """
        packed = events if isinstance(events, bytes) else None
        if packed is not None:
            events = [Event(*e) for e in msgpack.unpackb(packed, raw=False)]
        assert isinstance(events, list)
        refused = self._refuse(epoch, *(ev.customer_id for ev in events))
        if refused:
            return refused
        self._ensure_timer()
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        now = time.time()
        moved = [[i, self.moved[ev.customer_id]] for i, ev in enumerate(events)
                 if ev.customer_id in self.moved]  # fmt: skip
        if moved:
            gone = {i for i, _ in moved}
            events = [ev for i, ev in enumerate(events) if i not in gone]
            packed = None
        applied, dups = self.store.apply_events(events, now, self._attribute)
        if applied:
            self.journal.append("ev", now, packed or [list(ev) for ev in events])
            failed = await self._commit()
            if failed:
                return failed
        else:
            # Pure duplicates: wait for any in-flight commit that may hold
            # the originals, so we never acknowledge what is not yet durable.
            failed = await self._commit()
            if failed:
                return failed
        self.events_applied += applied
        self.duplicates += dups
        if moved:
            return {"applied": applied, "duplicates": dups, "moved": moved}
        return {"applied": applied, "duplicates": dups}

    async def get_profile(self, customer_id: str, epoch: int) -> dict[str, Any] | None:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        if customer_id in self.moved:
            return {"moved": self.moved[customer_id]}
        p = self.store.get(customer_id)
        if p is None:
            return None
        return {"profile": p.to_dict(time.time(), self.settings.session_gap_s)}

    async def delete_profile(self, customer_id: str, epoch: int) -> dict[str, Any]:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        deleted = self.store.delete(customer_id)
        deleted = bool(self.log.erase(customer_id)) or deleted
        unmoved = self._forget_moves(customer_id)
        deleted = bool(unmoved) or deleted
        if deleted:
            self.journal.append("del", customer_id)
            if unmoved:
                self.journal.append("unmove", customer_id)
            failed = await self._commit()
            if failed:
                return failed
            # The erased customer is still named in older journal segments
            # until a snapshot compacts them away: schedule one soon.
            self.erasures_pending += 1
        return {"deleted": deleted}

    # -- decisions ------------------------------------------------------------------

    def _attribute(self, ev: Event) -> Event:
        """Tie a response to its logged decision; fill in the offer it concerns."""
        if ev.type != "response" or ev.decision_id is None:
            return ev
        offer = self.log.attribute(
            ev.decision_id, ev.customer_id, ev.offer_id, ev.attributes["outcome"], ev.ts
        )
        if offer is not None and ev.offer_id is None:
            return ev._replace(offer_id=offer)
        return ev

    def _record_decisions(
        self, now: float, entries: list[dict], unpacked: dict[str, Profile] | None = None
    ) -> None:
        """Log decisions and count their offers as impressions (if on_decide).

        ``unpacked``: profiles the caller already holds, so they are not
        unpacked a second time.
        """
        touched: dict[str, Profile] = {}
        for entry in entries:
            self.log.add(entry)
            if not entry.get("impressions"):
                continue
            cid = entry["customer_id"]
            p = touched.get(cid) or (unpacked or {}).get(cid) or self.store.get_or_new(cid)
            touched[cid] = p
            for c in entry["chosen"]:
                p.record_contact(now, c["offer_id"], c["channel"], "impression")
        for p in touched.values():
            self.store.put(p)

    async def decide(
        self, requests: list[DecideRequest], deadlines: list[float] | None, epoch: int
    ) -> dict[str, Any]:
        """Decide for customers of this shard, with one model run for all of them.

        ``deadlines`` (epoch seconds, one per request): a request whose
        deadline has passed was already answered with the fallback by the
        caller, so it gets ``{"expired": True}`` and nothing is recorded.
        """
        refused = self._refuse(epoch, *(r.customer_id for r in requests))
        if refused:
            return refused
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        now = time.time()
        live = [
            i for i in range(len(requests))
            if (deadlines is None or deadlines[i] is None or deadlines[i] >= now)
            and requests[i].customer_id not in self.moved
        ]  # fmt: skip
        items = [(self.store.get_or_new(requests[i].customer_id), requests[i]) for i in live]
        try:
            decisions = (
                decide_many(items, self.catalog, self.scorer, now, self.settings.session_gap_s)
                if items
                else []
            )
        except RtimError as exc:
            return {"error": exc.to_dict()["error"]}
        on_decide = self.catalog.arbitration.impressions == "on_decide"
        results, entries = [], []
        for d in decisions:
            did = uuid.uuid4().hex
            chosen = [
                {"offer_id": o["offer_id"], "channel": o["channel"], "treatment": o["treatment"],
                 "probability": d.chosen_probability.get(o["offer_id"], 1.0)}
                for o in d.offers
            ]  # fmt: skip
            entries.append(
                {
                    "decision_id": did,
                    "customer_id": d.customer_id,
                    "ts": now,
                    "channels": list(d.channels),
                    "catalog_version": d.catalog_version,
                    "model_version": d.model_version,
                    "candidates": d.candidates,
                    "chosen": chosen,
                    "impressions": on_decide and bool(chosen),
                }
            )
            out = {
                "decision_id": did,
                "customer_id": d.customer_id,
                "offers": [{k: o[k] for k in OFFER_KEYS if k in o} for o in d.offers],
                "catalog_version": d.catalog_version,
                "model_version": d.model_version,
                "fallback": False,
            }
            if d.trace is not None:
                out["trace"] = d.trace
            results.append(out)
        self._record_decisions(now, entries, {p.customer_id: p for p, _ in items})
        if entries:
            self.journal.append("dec", now, entries)
            failed = await self._commit()
            if failed:
                return failed
        self.decisions += len(results)
        answers: list[dict[str, Any]] = [
            {"moved": self.moved[r.customer_id]} if r.customer_id in self.moved
            else {"expired": True}
            for r in requests
        ]  # fmt: skip
        for i, result in zip(live, results):
            answers[i] = result
        return {"decisions": answers}

    async def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        return self.log.get(decision_id)

    async def decisions_of(self, customer_id: str, epoch: int) -> dict[str, Any]:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        return {"decisions": self.log.for_customer(customer_id)}

    # -- merges (identity resolution) ------------------------------------------------

    def _forget_moves(self, customer_id: str) -> int:
        """Drop tombstones from or to an erased customer."""
        doomed = [a for a, s in self.moved.items() if customer_id in (a, s)]
        for a in doomed:
            del self.moved[a]
            self.pending_moves.pop(a, None)
        return len(doomed)

    def _move_out(self, absorbed: str, survivor: str, blob: bytes | None) -> None:
        self.store.delete(absorbed)
        self.moved[absorbed] = survivor
        if blob:
            self.pending_moves[absorbed] = [survivor, blob]

    def _merge_in(self, survivor: str, absorbed: str, blob: bytes, now: float) -> None:
        p = self.store.get_or_new(survivor)
        merge_profiles(p, Profile.unpack(absorbed, blob), now, self.settings.session_gap_s)
        self.store.put(p)

    async def move_out(self, absorbed: str, survivor: str, epoch: int) -> dict[str, Any]:
        """Hand a profile over to ``survivor`` (merge) and leave a tombstone.

        Later calls for ``absorbed`` are answered ``{"moved": survivor}``.
        The hand-over is journalled first, so a crash before the survivor's
        shard merged it is finished by the retry loop after recovery.
        """
        refused = self._refuse(epoch, absorbed)
        if refused:
            return refused
        if absorbed in self.moved:
            return {"moved": absorbed, "to": self.moved[absorbed], "pushed": True}
        blob = self.store.blob(absorbed)
        self._move_out(absorbed, survivor, blob)
        self.journal.append("move", absorbed, survivor, blob)
        failed = await self._commit()
        if failed:
            return failed
        pushed = await self._push(absorbed) if blob else True
        return {"moved": absorbed, "to": survivor, "pushed": pushed}

    async def _push(self, absorbed: str) -> bool:
        """Deliver a pending move to the survivor's shard; True once merged."""
        pending = self.pending_moves.get(absorbed)
        if pending is None:
            return True
        survivor, blob = pending
        for _ in range(8):  # follow a chain of merges, boundedly
            index = self.map_owner(survivor)
            if index == self.index:
                result = await self.merge_in(survivor, absorbed, blob, self.epoch)
            else:
                handle = ray.get_actor(shard_name(index), namespace=NAMESPACE)
                try:
                    result = await handle.merge_in.remote(survivor, absorbed, blob, self.epoch)
                except Exception as exc:  # the survivor's shard is restarting
                    log.warning("shard %s: push of %s failed (%s)", self.index, absorbed, exc)
                    return False
            if "moved" in result:
                survivor = result["moved"]
                continue
            if "merged" not in result:
                return False
            self.pending_moves.pop(absorbed, None)
            self.journal.append("moved_ack", absorbed)
            await self._commit()
            return True
        return False

    def map_owner(self, customer_id: str) -> int:
        return self.owners[partition_of(customer_id, self.partitions)]

    async def merge_in(
        self, survivor: str, absorbed: str, blob: bytes, epoch: int
    ) -> dict[str, Any]:
        """Fold an absorbed profile into ``survivor`` (idempotent)."""
        refused = self._refuse(epoch, survivor)
        if refused:
            return refused
        if survivor in self.moved:
            return {"moved": self.moved[survivor]}
        now = time.time()
        self._merge_in(survivor, absorbed, blob, now)
        self.journal.append("merge", survivor, absorbed, blob, now)
        failed = await self._commit()
        return failed or {"merged": True}

    async def forget_moves(self, customer_id: str) -> int:
        n = self._forget_moves(customer_id)
        if n:
            self.journal.append("unmove", customer_id)
            await self._commit()
        return n

    # -- catalogue and model ------------------------------------------------------------

    async def set_catalog(self, data: dict) -> dict[str, Any]:
        """Activate a (validated) catalogue; durable before it is acknowledged."""
        if self.degraded:
            return {"unavailable": self.degraded}
        try:
            catalog = load_catalog(data)
        except RtimError as exc:
            return {"error": exc.to_dict()["error"]}
        self.catalog = catalog
        self.journal.append("cat", data)
        failed = await self._commit()
        return failed or {"shard": self.index, "catalog_version": catalog.version}

    async def set_model(self, version: str) -> dict[str, Any]:
        """Load and activate a model version from the registry."""
        if self.degraded:
            return {"unavailable": self.degraded}
        try:
            self.scorer, self.model_version = load_model(self.settings, version, self.catalog)
        except RtimError as exc:
            return {"error": exc.to_dict()["error"]}
        self.model_error = None
        self.journal.append("mdl", self.model_version)
        failed = await self._commit()
        return failed or {"shard": self.index, "model_version": self.model_version}

    async def versions(self) -> dict[str, Any]:
        return {"catalog_version": self.catalog.version, "model_version": self.model_version}


OFFER_KEYS = ("offer_id", "channel", "treatment", "placement", "content", "propensity",
              "priority", "value")  # fmt: skip


def load_model(settings: Settings, version: str, catalog: Catalog) -> tuple[Any, str]:
    """The scorer for ``version`` ("" = newest); the prior scorer if the registry is empty."""
    from models.registry import ModelRegistry
    from models.scoring import PriorScorer

    try:
        registry = ModelRegistry(settings.model_registry, catalog.group_of)
    except RtimError:
        if version:
            raise
        scorer = PriorScorer()
        return scorer, scorer.version
    if not version:
        version = registry.latest_version() or ""
        if not version:
            scorer = PriorScorer()
            return scorer, scorer.version
    scorer = registry.load(version)
    return scorer, version


ProfileShard = ray.remote(ProfileShardImpl)
