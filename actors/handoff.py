"""``PartitionHandoff``: partitions leaving a shard for another one, and arriving.

A live partition move (Akka Cluster Sharding's hand-off) is driven by the
coordinator (``actors/coordinator.py``) one step at a time; every step here
is journalled and idempotent, so the coordinator can repeat any of them
after a crash of either shard or of itself:

1. **Hand off** (old owner): adopt the next map (epoch + 1), so calls for the
   moving partitions are refused with ``StaleEpoch`` from now on; export
   their profiles (dedupe ids are inside them), decision-log entries and
   merge hand-over state, plus this shard's erasure tombstones; journal
   :class:`PartitionsHandedOff` with the export, drop the data from memory
   and keep the export in an *outbox* until the move is acknowledged.
2. **Take over** (new owner): journal :class:`PartitionsTakenOver` with the
   export, import it and adopt the map; only then does it serve them.
3. **Acknowledge** (old owner): :class:`HandOffAcknowledged` empties the outbox.

Shards not in a move adopt the new map with :class:`MapAdopted`; a map is
adopted only if it neither gives nor takes partitions of that shard (those
change only through 1 and 2), and never goes back to an older epoch. A
restarted shard replays its journal, so it comes back with the map it last
adopted, not the one it was created with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack

from actors.decisions import DecisionEngine
from actors.durable import JournalRecord, journal_record
from actors.handover import Handover
from actors.ownership import Ownership
from actors.profiles import ProfileBook
from models.decisioning.record import from_builtins, to_builtins
from models.partitioning import PartitionMap, partition_of


@journal_record("map")
@dataclass(frozen=True, slots=True)
class MapAdopted(JournalRecord):
    map: dict


@journal_record("handoff")
@dataclass(frozen=True, slots=True)
class PartitionsHandedOff(JournalRecord):
    map: dict  # the map after the move
    partitions: list[int]
    to: int
    export: bytes


@journal_record("takeover")
@dataclass(frozen=True, slots=True)
class PartitionsTakenOver(JournalRecord):
    map: dict
    partitions: list[int]
    export: bytes


@journal_record("handoff_ack")
@dataclass(frozen=True, slots=True)
class HandOffAcknowledged(JournalRecord):
    epoch: int


class MapRefused(ValueError):
    """A map this shard must not adopt this way; the message says why."""


class PartitionHandoff:
    """Exports, imports and the outbox of one shard's partition moves."""

    def __init__(
        self,
        ownership: Ownership,
        profiles: ProfileBook,
        engine: DecisionEngine,
        handover: Handover,
    ) -> None:
        self.ownership = ownership
        self.profiles = profiles
        self.engine = engine
        self.handover = handover
        self.outbox: dict[int, bytes] = {}  # epoch -> export not yet acknowledged
        self.imported: set[int] = set()  # epochs whose take-over this shard journalled
        # Erasure tombstones arriving with partitions: [salt, {keyed hash: ts}] per origin.
        self.foreign_erased: list[list] = []

    def reset(self) -> None:
        self.outbox, self.imported, self.foreign_erased = {}, set(), []

    def load_snapshot(self, state: dict) -> None:
        self._adopt(state.get("map"))
        self.outbox.update({int(k): v for k, v in state.get("outbox", {}).items()})
        self.imported.update(state.get("imported", []))
        self.foreign_erased.extend(state.get("foreign_erased", []))

    def snapshot(self) -> dict[str, Any]:
        return {
            "map": self.ownership.map.to_dict(),
            "outbox": {str(k): v for k, v in self.outbox.items()},
            "imported": sorted(self.imported),
            "foreign_erased": self.foreign_erased,
        }

    # -- checks (before anything is journalled) ---------------------------------------

    def check_adopt(self, pmap: dict) -> PartitionMap | None:
        """The map to adopt, None if already at or past it; ``MapRefused`` if not ours to adopt."""
        new = PartitionMap.from_dict(pmap)
        if new.epoch <= self.ownership.epoch:
            return None
        if new.partitions_of(self.ownership.index) != self.ownership.owned:
            raise MapRefused("a map that moves this shard's partitions needs a hand-off")
        return new

    def check_handoff(self, pmap: dict, partitions: list[int], to: int) -> PartitionMap | None:
        new = PartitionMap.from_dict(pmap)
        if new.epoch in self.outbox or new.epoch <= self.ownership.epoch:
            return None  # done already (the outbox answers) or acknowledged
        moving = set(partitions)
        if not moving <= self.ownership.owned:
            raise MapRefused(f"partitions {sorted(moving - self.ownership.owned)} are not ours")
        if any(new.owners[p] != to for p in moving):
            raise MapRefused("the map does not give the moving partitions to the new owner")
        if new.partitions_of(self.ownership.index) != self.ownership.owned - moving:
            raise MapRefused("the map moves more than the handed-off partitions")
        return new

    def check_takeover(self, pmap: dict, partitions: list[int]) -> PartitionMap | None:
        new = PartitionMap.from_dict(pmap)
        if new.epoch in self.imported:
            return None
        if new.epoch <= self.ownership.epoch:
            raise MapRefused(f"epoch {new.epoch} is not newer than ours ({self.ownership.epoch})")
        expected = self.ownership.owned | set(partitions)
        if new.partitions_of(self.ownership.index) != expected:
            raise MapRefused("the map does not give this shard exactly the partitions taken over")
        return new

    # -- export -----------------------------------------------------------------------

    def export(self, partitions: list[int]) -> bytes:
        """Everything the shard holds for ``partitions``, packed (nothing is removed)."""
        moving = set(partitions)
        n = self.ownership.map.partitions

        def ours(cid: str) -> bool:
            return partition_of(cid, n) in moving

        h = self.handover
        return msgpack.packb(
            {
                "profiles": {c: b for c, b in self.profiles.store.items() if ours(c)},
                "decisions": [
                    to_builtins(r) for r in self.engine.log.records() if ours(r.customer_id)
                ],
                "moved": {a: s for a, s in h.moved.items() if ours(a)},
                "pending": {a: v for a, v in h.pending.items() if ours(a)},
                "unrepointed": {a: s for a, s in h.unrepointed.items() if ours(a)},
                "erased": [
                    [self.profiles.salt, dict(self.profiles.erased)],
                    *self.foreign_erased,
                ],
            },
            use_bin_type=True,
        )

    # -- applying records (live and on replay) ----------------------------------------

    def _adopt(self, pmap: dict | None) -> None:
        """Never back to an older epoch (a restarted actor starts from its creation map)."""
        if pmap and pmap["epoch"] > self.ownership.epoch:
            self.ownership.set_map(pmap)

    def adopted(self, rec: MapAdopted) -> None:
        self._adopt(rec.map)

    def handed_off(self, rec: PartitionsHandedOff) -> None:
        """Drop the exported partitions' data and keep the export until acknowledged."""
        data = msgpack.unpackb(rec.export, raw=False)
        for cid in data["profiles"]:
            self.profiles.store.delete(cid)
        for cid in {d["customer_id"] for d in data["decisions"]}:
            self.engine.log.erase(cid)
        for absorbed in data["moved"]:
            self.handover.moved.pop(absorbed, None)
            self.handover.pending.pop(absorbed, None)
            self.handover.unrepointed.pop(absorbed, None)
        self.outbox[rec.map["epoch"]] = rec.export
        self._adopt(rec.map)

    def taken_over(self, rec: PartitionsTakenOver) -> None:
        data = msgpack.unpackb(rec.export, raw=False)
        for cid, blob in data["profiles"].items():
            self.profiles.store.put_blob(cid, blob)
        for d in data["decisions"]:
            self.engine.log.add(from_builtins(d))
        self.handover.moved.update(data["moved"])
        self.handover.pending.update(data["pending"])
        self.handover.unrepointed.update(data["unrepointed"])
        cutoff = time.time() - self.profiles.tombstone_s
        for salt, tombs in data["erased"]:
            live = {t: ts for t, ts in tombs.items() if ts >= cutoff}
            if live:
                self.foreign_erased.append([salt, live])
        self.imported.add(rec.map["epoch"])
        self._adopt(rec.map)

    def acknowledged(self, rec: HandOffAcknowledged) -> None:
        self.outbox.pop(rec.epoch, None)

    # -- erasure tombstones from other shards -----------------------------------------

    def recently_erased(self, customer_id: str) -> bool:
        if not self.foreign_erased:
            return False
        cutoff = time.time() - self.profiles.tombstone_s
        self.foreign_erased = [[s, t] for s, t in self.foreign_erased
                               if any(ts >= cutoff for ts in t.values())]  # fmt: skip
        return any(
            tombs.get(self.profiles.tomb_with(salt, customer_id), 0.0) >= cutoff
            for salt, tombs in self.foreign_erased
        )
