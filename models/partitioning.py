"""Customer key → virtual partition → shard, with an epoch-stamped map.

Customers hash (blake2b, stable across processes and machines, unlike
Python's salted ``hash()``) to one of ``partitions`` virtual partitions that
never change. Partitions are assigned to shards by the :class:`PartitionMap`;
scaling out moves partitions between shards and bumps the epoch, it never
rehashes customers (the Akka Cluster Sharding / Orleans model). Identity
keys (``"cookie:abc"``) hash to the same partitions, with a map of their own
over the identity shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def partition_of(key: str, partitions: int) -> int:
    """Stable partition number of a customer key."""
    # surrogatepass: a key the HTTP edge should have refused still hashes, never raises.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % partitions


@dataclass(frozen=True, slots=True)
class PartitionMap:
    """Which shard owns each partition, as of ``epoch``."""

    epoch: int
    owners: tuple[int, ...]  # owners[partition] = shard index
    shards: int

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("a partition map needs at least one shard")
        if not self.owners:
            raise ValueError("a partition map needs at least one partition")
        if any(not 0 <= s < self.shards for s in self.owners):
            raise ValueError("partition owner out of range")

    @property
    def partitions(self) -> int:
        return len(self.owners)

    @classmethod
    def from_dict(cls, data: dict) -> PartitionMap:
        """The inverse of :meth:`to_dict` (raises ``ValueError``/``KeyError`` if malformed)."""
        return cls(int(data["epoch"]), tuple(int(s) for s in data["owners"]), int(data["shards"]))

    @classmethod
    def initial(cls, partitions: int, shards: int) -> PartitionMap:
        """Round-robin assignment, epoch 1."""
        if partitions < shards:
            raise ValueError(f"partitions ({partitions}) must be >= shards ({shards})")
        return cls(1, tuple(p % shards for p in range(partitions)), shards)

    def shard_of(self, key: str) -> int:
        return self.owners[partition_of(key, len(self.owners))]

    def partitions_of(self, shard: int) -> frozenset[int]:
        return frozenset(p for p, s in enumerate(self.owners) if s == shard)

    def rebalanced(self, shards: int) -> PartitionMap:
        """A map over ``shards`` shards that moves as few partitions as possible."""
        if shards < 1 or shards > len(self.owners):
            raise ValueError("shard count must be between 1 and the number of partitions")
        owners = list(self.owners)
        target = [len(owners) // shards + (1 if i < len(owners) % shards else 0)
                  for i in range(shards)]  # fmt: skip
        load = [0] * shards
        free: list[int] = []
        for p, s in enumerate(owners):
            if s < shards and load[s] < target[s]:
                load[s] += 1
            else:
                free.append(p)
        for p in free:
            s = min(range(shards), key=lambda i: load[i] - target[i])
            owners[p] = s
            load[s] += 1
        return PartitionMap(self.epoch + 1, tuple(owners), shards)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "shards": self.shards, "owners": list(self.owners)}


@dataclass(frozen=True, slots=True)
class Move:
    """Partitions going from one shard to another in one hand-off (one epoch)."""

    source: int
    target: int
    partitions: tuple[int, ...]


def plan_moves(current: PartitionMap, target: PartitionMap, per_move: int) -> list[Move]:
    """The hand-offs that turn ``current`` into ``target``, at most ``per_move`` partitions each."""
    if per_move < 1:
        raise ValueError("per_move must be >= 1")
    if current.partitions != target.partitions:
        raise ValueError("maps over different partition counts")
    groups: dict[tuple[int, int], list[int]] = {}
    for p, (a, b) in enumerate(zip(current.owners, target.owners)):
        if a != b:
            groups.setdefault((a, b), []).append(p)
    return [
        Move(a, b, tuple(parts[i : i + per_move]))
        for (a, b), parts in sorted(groups.items())
        for i in range(0, len(parts), per_move)
    ]


def after_move(pmap: PartitionMap, move: Move, shards: int | None = None) -> PartitionMap:
    """``pmap`` with ``move`` applied, at the next epoch (over ``shards`` shards if given)."""
    owners = list(pmap.owners)
    for p in move.partitions:
        if owners[p] != move.source:
            raise ValueError(f"partition {p} is owned by shard {owners[p]}, not {move.source}")
        owners[p] = move.target
    return PartitionMap(pmap.epoch + 1, tuple(owners), shards or pmap.shards)
