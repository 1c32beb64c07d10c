"""``IdentityShard``: the Ray actor that owns part of the identity map.

Identifier keys (``"cookie:abc"``) hash to the same virtual partitions as
customers and are owned by identity shards the way profiles are owned by
profile shards. Each identity shard holds a
:class:`models.identity.table.IdentityTable` and journals every change
(claim, repoint, release, forget) before it answers, with the same
:class:`~actors.durable.DurableState` as the profile shards.

Identity partitions have their own partition map (its own epoch), kept by
the coordinator beside the profile map, and move between identity shards
with the profile shards' hand-off protocol (``actors/handoff.py``): what
travels is the links of the moving partitions (:class:`IdentityHandoff`).
Every call names the caller's identity-map epoch; a shard answers
``StaleEpoch`` when it is not its own, or when a key of the call lives in a
partition it does not own, so the caller refreshes its map and retries. A
call about whole profiles (``records_of``, ``repoint_profile``, ``forget``)
goes to every identity shard and succeeds only when all of them are at the
caller's epoch, so it never misses links that are in transit.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import ray

from actors import heap
from actors.durable import DurableState, JournalRecord, journal_record
from actors.handoff import HandoffEndpoints, PartitionHandoff
from actors.ownership import Ownership
from actors.replies import ShardUnavailable, StaleEpoch
from models.errors import Unavailable
from models.identity.config import IdentityConfig
from models.identity.table import IdentityTable
from models.partitioning import PartitionMap
from models.settings import Settings

Refused = StaleEpoch | ShardUnavailable


def identity_name(index: int) -> str:
    return f"rtim-identity-{index}"


def identity_dir(data_dir: str, index: int) -> Path:
    return Path(data_dir) / f"identity-{index}"


@journal_record("claim")
@dataclass(frozen=True, slots=True)
class IdentifiersClaimed(JournalRecord):
    entries: list  # [key, profile id, first seen]


@journal_record("repoint")
@dataclass(frozen=True, slots=True)
class ProfileRepointed(JournalRecord):
    old: str
    new: str


@journal_record("release")
@dataclass(frozen=True, slots=True)
class IdentifiersReleased(JournalRecord):
    keys: list[str]


@journal_record("forget")
@dataclass(frozen=True, slots=True)
class ProfileForgotten(JournalRecord):
    profile_id: str


class IdentityHandoff(PartitionHandoff):
    """What an identity shard hands off: the links of the moving partitions."""

    def __init__(self, ownership: Ownership, shard: IdentityShardImpl) -> None:
        super().__init__(ownership)
        self.shard = shard  # its table is replaced on recovery: always read it from there

    def export(self, partitions: list[int]) -> bytes:
        links = self.shard.table.records_where(self.moving(partitions))
        return msgpack.packb({"links": [list(r) for r in links]}, use_bin_type=True)

    def drop(self, data: dict) -> None:
        self.shard.table.remove(key for key, _pid, _ts in data["links"])

    def load(self, data: dict) -> None:
        self.shard.table.add(data["links"])


class IdentityShardImpl(HandoffEndpoints):
    """One identity shard; :data:`IdentityShard` is its Ray actor class."""

    def __init__(
        self, index: int, settings: dict, identity: dict | None = None, pmap: dict | None = None
    ) -> None:
        self.index = index
        self.settings = Settings.from_dict(settings)
        self.config = IdentityConfig.from_settings_value(identity)
        self.table = IdentityTable(self.config)
        self.timer: asyncio.Task | None = None
        # Without a map (tests of one shard): it owns every partition.
        self.ownership = Ownership(
            index, pmap or PartitionMap.initial(self.settings.partitions, 1).to_dict()
        )
        self.handoff = IdentityHandoff(self.ownership, self)
        self.durable = DurableState(
            f"identity shard {index}",
            identity_dir(self.settings.data_dir, index),
            self.settings,
            self,
            {
                IdentifiersClaimed: self._claimed,
                ProfileRepointed: lambda r: self.table.repoint_profile(r.old, r.new),
                IdentifiersReleased: lambda r: self.table.release(r.keys),
                ProfileForgotten: lambda r: self.table.forget_profile(r.profile_id),
                **self.handoff.handlers(),
            },
        )
        self.durable.recover()

    # -- what DurableState needs ------------------------------------------------------

    def reset_state(self) -> None:
        self.table = IdentityTable(self.config)
        self.handoff.reset()

    def load_snapshot(self, state: dict) -> None:
        self.table = IdentityTable.from_state(state["table"], self.config)
        self.handoff.load_snapshot(state)

    def snapshot_state(self) -> dict:
        return {"table": self.table.to_state(), **self.handoff.snapshot()}

    def snapshot_sync(self) -> None:
        return None  # nothing outside the journal and the snapshot

    def _claimed(self, rec: IdentifiersClaimed) -> None:
        for key, pid, ts in rec.entries:
            self.table.claim(key, pid, ts)

    def _ensure_timer(self) -> None:
        """Start the loop that snapshots when due and retries a failed recovery."""
        if self.timer is None:
            self.timer = asyncio.get_running_loop().create_task(self._timer_loop())

    async def _record(self, *records: Any) -> ShardUnavailable | None:
        self._ensure_timer()
        try:
            await self.durable.record(*records)
        except Unavailable as exc:
            return ShardUnavailable(exc.message)
        return None

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.durable.tick()

    def _refuse(self, epoch: int, keys: Sequence[str] = ()) -> Refused | None:
        """Unavailable, or the caller's map is not ours / names keys we do not own."""
        degraded = self.durable.degraded
        if degraded is not None:
            return ShardUnavailable(degraded)
        return self.ownership.check(epoch, *keys)

    # -- API (every call ends with the caller's identity-map epoch) -----------------------

    async def ping(self) -> dict[str, Any]:
        self._ensure_timer()  # the coordinator pings every shard at start
        return {
            "identity_shard": self.index,
            "identifiers": len(self.table),
            "epoch": self.ownership.epoch,
            "partitions": len(self.ownership.owned),
            "outbox": sorted(self.handoff.outbox),
            "degraded": self.durable.degraded,
            "pid": os.getpid(),
            "gc_frozen": gc.get_freeze_count(),  # the start-up heap (actors/heap.py)
        }

    async def snapshot(self) -> dict[str, Any] | ShardUnavailable:
        try:
            result = await self.durable.snapshot()
        except Unavailable as exc:
            return ShardUnavailable(exc.message)
        return {"identity_shard": self.index, "identifiers": len(self.table), **result}

    async def resolve(self, keys: list[str], epoch: int) -> dict[str, str | None] | Refused:
        return self._refuse(epoch, keys) or self.table.resolve(keys)

    async def records_of(self, profile_ids: list[str], epoch: int) -> list[list] | Refused:
        return self._refuse(epoch) or [list(r) for r in self.table.records_of(profile_ids)]

    async def claim(
        self, keys: list[str], profile_id: str, ts: float, epoch: int
    ) -> dict[str, str] | Refused:
        """Map unmapped ``keys`` to ``profile_id``; answer every key's owner."""
        if (refused := self._refuse(epoch, keys)) is not None:
            return refused
        owners = {k: self.table.claim(k, profile_id, ts) for k in keys}
        won = [[k, profile_id, ts] for k, o in owners.items() if o == profile_id]
        failed = await self._record(IdentifiersClaimed(won)) if won else await self._record()
        return failed or owners

    async def repoint_profile(self, old: str, new: str, epoch: int) -> list[str] | Refused:
        if (refused := self._refuse(epoch)) is not None:
            return refused
        moved = self.table.repoint_profile(old, new)
        failed = await self._record(ProfileRepointed(old, new)) if moved else None
        return failed or moved

    async def release(self, keys: list[str], owner: str | None, epoch: int) -> list[str] | Refused:
        """Unmap ``keys`` (only those ``owner`` holds, if given); answer those unmapped."""
        if (refused := self._refuse(epoch, keys)) is not None:
            return refused
        released = self.table.release(keys, owner)
        failed = await self._record(IdentifiersReleased(released)) if released else None
        return failed or released

    async def forget(self, profile_id: str, epoch: int) -> list[str] | Refused:
        """Right to erasure: drop every identifier of the profile."""
        if (refused := self._refuse(epoch)) is not None:
            return refused
        keys = self.table.forget_profile(profile_id)
        if keys:
            failed = await self._record(ProfileForgotten(profile_id))
            if failed:
                return failed
            # The erased identifiers are still named by older journal records:
            # compact them away now (erasures are rare; snapshots are small).
            await self.snapshot()
        return keys


@ray.remote
class IdentityShard(IdentityShardImpl):
    """The Ray actor: :class:`IdentityShardImpl`, its start-up heap frozen (``actors/heap.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        heap.settle()
