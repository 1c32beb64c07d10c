"""``PartitionHandoff``: partitions leaving a shard for another one, and arriving.

Profile shards and identity shards move partitions with the same protocol,
records and actor methods (:class:`HandoffEndpoints`); only what travels
differs (:class:`ProfileHandoff` here, ``IdentityHandoff`` in
``actors/identity.py``).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from actors.decisions import DecisionEngine
from actors.durable import DurableState, JournalRecord, journal_record
from actors.handover import Handover
from actors.ownership import Ownership
from actors.profiles import ProfileBook
from actors.replies import Failed, Refusal, ShardUnavailable
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
    """The hand-off protocol of one shard: map checks, the outbox, the imports.

    What moves is up to the subclass (:meth:`export`, :meth:`drop`,
    :meth:`load`): profile shards move profiles and decisions
    (:class:`ProfileHandoff`), identity shards move identifier links
    (``actors/identity.py``). The steps, their records and checks are shared.
    """

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership
        self.outbox: dict[int, bytes] = {}  # epoch -> export not yet acknowledged
        self.imported: set[int] = set()  # epochs whose take-over this shard journalled

    # -- what a subclass supplies -----------------------------------------------------

    def export(self, partitions: list[int]) -> bytes:
        """Everything the shard holds for ``partitions``, packed (nothing is removed)."""
        raise NotImplementedError

    def drop(self, data: dict) -> None:
        """Forget what an export (unpacked) carried away."""
        raise NotImplementedError

    def load(self, data: dict) -> None:
        """Take in what an export (unpacked) brought."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------

    def handlers(self) -> dict[type[JournalRecord], Callable[[Any], None]]:
        """The journal records of the protocol and how they apply (for ``DurableState``)."""
        return {
            MapAdopted: self.adopted,
            PartitionsHandedOff: self.handed_off,
            PartitionsTakenOver: self.taken_over,
            HandOffAcknowledged: self.acknowledged,
        }

    def reset(self) -> None:
        self.outbox, self.imported = {}, set()

    def load_snapshot(self, state: dict) -> None:
        self._adopt(state.get("map"))
        self.outbox.update({int(k): v for k, v in state.get("outbox", {}).items()})
        self.imported.update(state.get("imported", []))

    def snapshot(self) -> dict[str, Any]:
        return {
            "map": self.ownership.map.to_dict(),
            "outbox": {str(k): v for k, v in self.outbox.items()},
            "imported": sorted(self.imported),
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

    def moving(self, partitions: list[int]) -> Callable[[str], bool]:
        """Whether a key (customer id, identifier key) lives in one of ``partitions``."""
        moving, n = set(partitions), self.ownership.map.partitions
        return lambda key: partition_of(key, n) in moving

    # -- applying records (live and on replay) ----------------------------------------

    def _adopt(self, pmap: dict | None) -> None:
        """Never back to an older epoch (a restarted actor starts from its creation map)."""
        if pmap and pmap["epoch"] > self.ownership.epoch:
            self.ownership.set_map(pmap)

    def adopted(self, rec: MapAdopted) -> None:
        self._adopt(rec.map)

    def handed_off(self, rec: PartitionsHandedOff) -> None:
        """Drop the exported partitions' data and keep the export until acknowledged."""
        self.drop(msgpack.unpackb(rec.export, raw=False))
        self.outbox[rec.map["epoch"]] = rec.export
        self._adopt(rec.map)

    def taken_over(self, rec: PartitionsTakenOver) -> None:
        self.load(msgpack.unpackb(rec.export, raw=False))
        self.imported.add(rec.map["epoch"])
        self._adopt(rec.map)

    def acknowledged(self, rec: HandOffAcknowledged) -> None:
        self.outbox.pop(rec.epoch, None)


class HandoffEndpoints:
    """The actor methods of the protocol, shared by profile and identity shards.

    The actor supplies ``index``, ``durable``, ``handoff`` (a
    :class:`PartitionHandoff`), ``_record`` and ``_ensure_timer``; it may
    override :meth:`_map_changed`.
    """

    index: int
    durable: DurableState
    handoff: PartitionHandoff
    _record: Callable[..., Awaitable[ShardUnavailable | None]]
    _ensure_timer: Callable[[], None]

    def _map_changed(self) -> None:
        """Called when a newer map was adopted (peers may have moved)."""

    async def adopt_map(self, pmap: dict) -> dict[str, Any] | Refusal:
        """Adopt a newer map that leaves this shard's partitions as they are."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        try:
            new = self.handoff.check_adopt(pmap)
        except MapRefused as exc:
            return Failed("map_refused", str(exc))
        if new is not None:
            rec = MapAdopted(new.to_dict())
            self.handoff.adopted(rec)
            self._map_changed()
            failed = await self._record(rec)
            if failed:
                return failed
        return {"shard": self.index, "epoch": self.handoff.ownership.epoch}

    async def hand_off(self, pmap: dict, partitions: list[int], to: int) -> bytes | Refusal | None:
        """Step 1 of a move: stop serving ``partitions``, export them durably.

        Answers the export (also when asked again before the acknowledgement),
        or None when this move was acknowledged already.
        """
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        try:
            new = self.handoff.check_handoff(pmap, partitions, to)
        except MapRefused as exc:
            return Failed("map_refused", str(exc))
        epoch = pmap["epoch"]
        if new is not None:
            # No await between the export and the drop: calls accepted
            # before this point are in the export, later ones are refused.
            rec = PartitionsHandedOff(new.to_dict(), sorted(partitions), to,
                                      self.handoff.export(partitions))  # fmt: skip
            self.handoff.handed_off(rec)
            failed = await self._record(rec)
            if failed:
                return failed
        else:
            await self._record()  # what an earlier identical call journalled is durable
        return self.handoff.outbox.get(epoch)

    async def take_over(
        self, pmap: dict, partitions: list[int], export: bytes
    ) -> dict[str, Any] | Refusal:
        """Step 2 of a move: journal the import, then serve ``partitions``."""
        if self.durable.degraded:
            return ShardUnavailable(self.durable.degraded)
        try:
            new = self.handoff.check_takeover(pmap, partitions)
        except MapRefused as exc:
            return Failed("map_refused", str(exc))
        self._ensure_timer()
        if new is not None:
            rec = PartitionsTakenOver(new.to_dict(), sorted(partitions), export)
            self.handoff.taken_over(rec)
            failed = await self._record(rec)
        else:
            failed = await self._record()
        return failed or {"shard": self.index, "epoch": self.handoff.ownership.epoch}

    async def acknowledge_hand_off(self, epoch: int) -> bool | Refusal:
        """Step 3 of a move: the new owner holds the partitions; forget the export."""
        if epoch not in self.handoff.outbox:
            return True
        rec = HandOffAcknowledged(epoch)
        self.handoff.acknowledged(rec)
        # The export (personal data) is still in the journal: compact it away soon,
        # so data erased on its new owner does not linger here.
        self.durable.note_erasure()
        return await self._record(rec) or True


class ProfileHandoff(PartitionHandoff):
    """What a profile shard hands off: profiles (with their dedupe ids), decision-log
    entries, merge hand-over state and erasure tombstones."""

    def __init__(
        self,
        ownership: Ownership,
        profiles: ProfileBook,
        engine: DecisionEngine,
        handover: Handover,
    ) -> None:
        super().__init__(ownership)
        self.profiles = profiles
        self.engine = engine
        self.handover = handover
        # Erasure tombstones arriving with partitions: [salt, {keyed hash: ts}] per origin.
        self.foreign_erased: list[list] = []

    def reset(self) -> None:
        super().reset()
        self.foreign_erased = []

    def load_snapshot(self, state: dict) -> None:
        super().load_snapshot(state)
        self.foreign_erased.extend(state.get("foreign_erased", []))

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "foreign_erased": self.foreign_erased}

    def export(self, partitions: list[int]) -> bytes:
        ours = self.moving(partitions)
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

    def drop(self, data: dict) -> None:
        for cid in data["profiles"]:
            self.profiles.store.delete(cid)
        for cid in {d["customer_id"] for d in data["decisions"]}:
            self.engine.log.erase(cid)
        for absorbed in data["moved"]:
            self.handover.moved.pop(absorbed, None)
            self.handover.pending.pop(absorbed, None)
            self.handover.unrepointed.pop(absorbed, None)

    def load(self, data: dict) -> None:
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
