"""``IdentityShard``: the Ray actor that owns part of the identity map.

Identifier keys (``"cookie:abc"``) hash to the same virtual partitions as
customers and are owned by identity shards the way profiles are owned by
profile shards. Each identity shard holds a
:class:`models.identity.table.IdentityTable` and journals every change
(claim, repoint, release, forget) before it answers, with the same
:class:`~actors.durable.DurableState` as the profile shards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from actors.durable import DurableState, JournalRecord, journal_record
from actors.replies import ShardUnavailable
from models.errors import Unavailable
from models.identity.config import IdentityConfig
from models.identity.table import IdentityTable
from models.settings import Settings


def identity_name(index: int) -> str:
    return f"rtim-identity-{index}"


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


class IdentityShardImpl:
    """One identity shard; :data:`IdentityShard` is its Ray actor class."""

    def __init__(self, index: int, settings: dict, identity: dict | None = None) -> None:
        self.index = index
        self.settings = Settings.from_dict(settings)
        self.config = IdentityConfig.from_settings_value(identity)
        self.table = IdentityTable(self.config)
        self.timer: asyncio.Task | None = None
        self.durable = DurableState(
            f"identity shard {index}",
            Path(self.settings.data_dir) / f"identity-{index}",
            self.settings,
            self,
            {
                IdentifiersClaimed: self._claimed,
                ProfileRepointed: lambda r: self.table.repoint_profile(r.old, r.new),
                IdentifiersReleased: lambda r: self.table.release(r.keys),
                ProfileForgotten: lambda r: self.table.forget_profile(r.profile_id),
            },
        )
        self.durable.recover()

    # -- what DurableState needs ------------------------------------------------------

    def reset_state(self) -> None:
        self.table = IdentityTable(self.config)

    def load_snapshot(self, state: dict) -> None:
        self.table = IdentityTable.from_state(state["table"], self.config)

    def snapshot_state(self) -> dict:
        return {"table": self.table.to_state()}

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

    def _unavailable(self) -> ShardUnavailable | None:
        degraded = self.durable.degraded
        return None if degraded is None else ShardUnavailable(degraded)

    # -- API ----------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        self._ensure_timer()  # the coordinator pings every shard at start
        return {"identity_shard": self.index, "identifiers": len(self.table),
                "degraded": self.durable.degraded}  # fmt: skip

    async def snapshot(self) -> dict[str, Any] | ShardUnavailable:
        try:
            result = await self.durable.snapshot()
        except Unavailable as exc:
            return ShardUnavailable(exc.message)
        return {"identity_shard": self.index, "identifiers": len(self.table), **result}

    async def resolve(self, keys: list[str]) -> dict[str, str | None] | ShardUnavailable:
        return self._unavailable() or self.table.resolve(keys)

    async def records_of(self, profile_ids: list[str]) -> list[list] | ShardUnavailable:
        return self._unavailable() or [list(r) for r in self.table.records_of(profile_ids)]

    async def claim(
        self, keys: list[str], profile_id: str, ts: float
    ) -> dict[str, str] | ShardUnavailable:
        """Map unmapped ``keys`` to ``profile_id``; answer every key's owner."""
        if (down := self._unavailable()) is not None:
            return down
        owners = {k: self.table.claim(k, profile_id, ts) for k in keys}
        won = [[k, profile_id, ts] for k, o in owners.items() if o == profile_id]
        failed = await self._record(IdentifiersClaimed(won)) if won else await self._record()
        return failed or owners

    async def repoint_profile(self, old: str, new: str) -> list[str] | ShardUnavailable:
        if (down := self._unavailable()) is not None:
            return down
        moved = self.table.repoint_profile(old, new)
        failed = await self._record(ProfileRepointed(old, new)) if moved else None
        return failed or moved

    async def release(
        self, keys: list[str], owner: str | None = None
    ) -> list[str] | ShardUnavailable:
        """Unmap ``keys`` (only those ``owner`` holds, if given); answer those unmapped."""
        if (down := self._unavailable()) is not None:
            return down
        released = self.table.release(keys, owner)
        failed = await self._record(IdentifiersReleased(released)) if released else None
        return failed or released

    async def forget(self, profile_id: str) -> list[str] | ShardUnavailable:
        """Right to erasure: drop every identifier of the profile."""
        if (down := self._unavailable()) is not None:
            return down
        keys = self.table.forget_profile(profile_id)
        if keys:
            failed = await self._record(ProfileForgotten(profile_id))
            if failed:
                return failed
            # The erased identifiers are still named by older journal records:
            # compact them away now (erasures are rare; snapshots are small).
            await self.snapshot()
        return keys


IdentityShard = ray.remote(IdentityShardImpl)
