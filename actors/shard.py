"""``ProfileShard``: the Ray actor that owns the profiles of some partitions.

Each shard is an async actor. Its methods do their in-memory work without
awaiting in between, so calls never interleave mid-update and need no locks;
that is also what gives read-your-writes: an event batch is applied before
the call that carries it returns, and a later call for the same customer runs
after it on the same actor.

The shard checks that it owns every customer it is asked about. A caller
routing with an old partition map gets ``{"stale": epoch}`` back and must
refresh its map (the coordinator's epoch) and retry.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray

from models.events import Event
from models.partitioning import PartitionMap, partition_of
from models.settings import Settings
from models.store import ProfileStore

log = logging.getLogger("rtim.shard")

NAMESPACE = "rtim"


def shard_name(index: int) -> str:
    return f"rtim-shard-{index}"


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

    def _set_map(self, pmap: dict) -> None:
        m = PartitionMap(pmap["epoch"], tuple(pmap["owners"]), pmap["shards"])
        self.epoch = m.epoch
        self.partitions = m.partitions
        self.owned = m.partitions_of(self.index)

    def _owns(self, customer_id: str) -> bool:
        return partition_of(customer_id, self.partitions) in self.owned

    # -- control ----------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {
            "shard": self.index,
            "epoch": self.epoch,
            "profiles": len(self.store),
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    async def stats(self) -> dict[str, Any]:
        return {
            **(await self.ping()),
            "events_applied": self.events_applied,
            "duplicates": self.duplicates,
            "memory_bytes": self.store.memory_bytes(),
            "uptime_s": time.time() - self.started_at,
        }

    async def set_map(self, pmap: dict) -> int:
        self._set_map(pmap)
        return self.epoch

    async def customer_ids(self) -> list[str]:
        return list(self.store.ids())

    # -- profiles ---------------------------------------------------------------

    async def apply_events(self, events: list[Event], epoch: int) -> dict[str, Any]:
        """Apply a batch of events owned by this shard, in order."""
        if epoch != self.epoch or not all(self._owns(ev.customer_id) for ev in events):
            return {"stale": self.epoch}
        applied, dups = self.store.apply_events(events, time.time())
        self.events_applied += applied
        self.duplicates += dups
        return {"applied": applied, "duplicates": dups}

    async def get_profile(self, customer_id: str, epoch: int) -> dict[str, Any] | None:
        if epoch != self.epoch or not self._owns(customer_id):
            return {"stale": self.epoch}
        p = self.store.get(customer_id)
        if p is None:
            return None
        return {"profile": p.to_dict(time.time(), self.settings.session_gap_s)}

    async def delete_profile(self, customer_id: str, epoch: int) -> dict[str, Any]:
        if epoch != self.epoch or not self._owns(customer_id):
            return {"stale": self.epoch}
        return {"deleted": self.store.delete(customer_id)}


ProfileShard = ray.remote(ProfileShardImpl)
