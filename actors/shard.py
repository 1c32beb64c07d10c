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
from pathlib import Path
from typing import Any

import ray

from actors.journal import Journal
from models.events import Event
from models.partitioning import PartitionMap, partition_of
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

    def __init__(self, index: int, settings: dict, pmap: dict) -> None:
        self.index = index
        self.settings = Settings.from_dict(settings)
        self.store = ProfileStore(self.settings.session_gap_s)
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

    def _replay(self, rec: list) -> None:
        kind = rec[1]
        if kind == "ev":
            now, events = rec[2], rec[3]
            self.store.apply_events([Event(*e) for e in events], now)
        elif kind == "del":
            self.store.delete(rec[2])

    def _snapshot_state(self) -> dict:
        return {
            "v": SNAPSHOT_VERSION,
            "lsn": self.journal.lsn,
            "shard": self.index,
            "taken_at": time.time(),
            "profiles": dict(self.store.items()),
        }

    def _ensure_timer(self) -> None:
        """Start the background loop that takes snapshots when they are due."""
        if self.timer is None:
            self.timer = asyncio.get_running_loop().create_task(self._timer_loop())

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            idle = self.snapshot_task is None or self.snapshot_task.done()
            if self.journal.failed is not None and idle:
                # A failed journal write left memory ahead of the disk; a
                # snapshot saves all of it and clears the failure once the
                # disk takes writes again.
                self.snapshot_task = asyncio.get_running_loop().create_task(self.snapshot())
            elif not self.degraded:
                self._maybe_snapshot()

    async def snapshot(self) -> dict[str, Any]:
        """Write a snapshot now and compact the journal behind it."""
        if self.degraded and self.journal.failed is None:
            return {"unavailable": self.degraded}
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
        if self.journal.failed is not None:
            # The journal had failed; memory is now safely on disk again.
            self.journal.failed = None
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
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def set_map(self, pmap: dict) -> int:
        self._set_map(pmap)
        return self.epoch

    async def customer_ids(self) -> list[str]:
        return list(self.store.ids())

    async def set_slow(self, seconds: float) -> None:
        """Test hook: delay every decision by ``seconds``."""
        self.slow_s = seconds

    # -- profiles -------------------------------------------------------------------

    async def apply_events(self, events: list[Event], epoch: int) -> dict[str, Any]:
        """Apply a batch of events owned by this shard, durably, in order."""
        refused = self._refuse(epoch, *(ev.customer_id for ev in events))
        if refused:
            return refused
        self._ensure_timer()
        now = time.time()
        applied, dups = self.store.apply_events(events, now)
        if applied:
            self.journal.append("ev", now, [list(ev) for ev in events])
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
        return {"applied": applied, "duplicates": dups}

    async def get_profile(self, customer_id: str, epoch: int) -> dict[str, Any] | None:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        p = self.store.get(customer_id)
        if p is None:
            return None
        return {"profile": p.to_dict(time.time(), self.settings.session_gap_s)}

    async def delete_profile(self, customer_id: str, epoch: int) -> dict[str, Any]:
        refused = self._refuse(epoch, customer_id)
        if refused:
            return refused
        deleted = self.store.delete(customer_id)
        if deleted:
            self.journal.append("del", customer_id)
            failed = await self._commit()
            if failed:
                return failed
            # The erased customer is still named in older journal segments
            # until a snapshot compacts them away: schedule one soon.
            self.erasures_pending += 1
        return {"deleted": deleted}


ProfileShard = ray.remote(ProfileShardImpl)
