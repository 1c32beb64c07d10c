"""``IdentityShard``: the Ray actor that owns part of the identity map.

Identifier keys (``"cookie:abc"``) hash to the same virtual partitions as
customers and are owned by identity shards the way profiles are owned by
profile shards. Each identity shard holds a :class:`models.identity.IdentityTable`
and journals every change (claim, repoint, release, forget) before it answers,
with the same journal and snapshot machinery as the profile shards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import ray

from actors.journal import Journal
from models.identity import IdentityConfig, IdentityTable
from models.settings import Settings

log = logging.getLogger("rtim.identity")


def identity_name(index: int) -> str:
    return f"rtim-identity-{index}"


class IdentityShardImpl:
    """One identity shard; :data:`IdentityShard` is its Ray actor class."""

    def __init__(self, index: int, settings: dict, identity: dict | None = None) -> None:
        self.index = index
        self.settings = Settings.from_dict(settings)
        self.config = IdentityConfig.from_settings_value(identity)
        self.table = IdentityTable(self.config)
        self.journal = Journal(
            Path(self.settings.data_dir) / f"identity-{index}",
            self.settings.fsync,
            self.settings.fsync_interval_s,
        )
        self.degraded: str | None = None
        self.last_snapshot = time.monotonic()
        self.snapshot_task: asyncio.Task | None = None
        try:
            state, records = self.journal.recover()
            if state is not None:
                self.table = IdentityTable.from_state(state["table"], self.config)
            for rec in records:
                self._replay(rec)
        except OSError as exc:
            self.degraded = f"data directory unusable: {exc.strerror or exc}"
            log.error("identity shard %s: %s", index, self.degraded)

    def _replay(self, rec: list) -> None:
        kind = rec[1]
        if kind == "claim":
            for key, pid, ts in rec[2]:
                self.table.claim(key, pid, ts)
        elif kind == "repoint":
            self.table.repoint_profile(rec[2], rec[3])
        elif kind == "release":
            self.table.release(rec[2])
        elif kind == "forget":
            self.table.forget_profile(rec[2])

    async def _commit(self) -> dict[str, Any] | None:
        if self.degraded:
            return {"unavailable": self.degraded}
        try:
            await self.journal.commit()
        except Exception as exc:
            self.degraded = str(getattr(exc, "message", exc))
            return {"unavailable": self.degraded}
        due = time.monotonic() - self.last_snapshot >= self.settings.snapshot_interval_s
        if due and (self.snapshot_task is None or self.snapshot_task.done()):
            self.snapshot_task = asyncio.get_running_loop().create_task(self.snapshot())
        return None

    async def snapshot(self) -> dict[str, Any]:
        if self.degraded:
            return {"unavailable": self.degraded}
        upto = self.journal.rotate()
        state = {"lsn": self.journal.lsn, "table": self.table.to_state()}
        self.last_snapshot = time.monotonic()
        size = await asyncio.to_thread(self.journal.write_snapshot, upto, state)
        return {"identity_shard": self.index, "bytes": size, "identifiers": len(self.table)}

    async def ping(self) -> dict[str, Any]:
        return {"identity_shard": self.index, "identifiers": len(self.table),
                "degraded": self.degraded}  # fmt: skip

    async def resolve(self, keys: list[str]) -> dict[str, str | None]:
        return self.table.resolve(keys)

    async def records_of(self, profile_ids: list[str]) -> list[list]:
        return [list(r) for r in self.table.records_of(profile_ids)]

    async def claim(self, keys: list[str], profile_id: str, ts: float) -> dict[str, Any]:
        """Map unmapped ``keys`` to ``profile_id``; answer every key's owner."""
        owners = {k: self.table.claim(k, profile_id, ts) for k in keys}
        won = [[k, profile_id, ts] for k, o in owners.items() if o == profile_id]
        if won:
            self.journal.append("claim", won)
            failed = await self._commit()
            if failed:
                return failed
        return {"owners": owners}

    async def repoint_profile(self, old: str, new: str) -> dict[str, Any]:
        moved = self.table.repoint_profile(old, new)
        if moved:
            self.journal.append("repoint", old, new)
            failed = await self._commit()
            if failed:
                return failed
        return {"moved": moved}

    async def release(self, keys: list[str]) -> dict[str, Any]:
        released = self.table.release(keys)
        if released:
            self.journal.append("release", released)
            failed = await self._commit()
            if failed:
                return failed
        return {"released": released}

    async def forget(self, profile_id: str) -> dict[str, Any]:
        """Right to erasure: drop every identifier of the profile."""
        keys = self.table.forget_profile(profile_id)
        if keys:
            self.journal.append("forget", profile_id)
            failed = await self._commit()
            if failed:
                return failed
            # The erased identifiers are still named by older journal records:
            # compact them away now (erasures are rare; snapshots are small).
            await self.snapshot()
        return {"forgotten": keys}


IdentityShard = ray.remote(IdentityShardImpl)
