"""``Ownership``: which partitions a shard owns, under which partition-map epoch.

Every call names the epoch of the caller's map. A shard answers
:class:`~actors.replies.StaleEpoch` when that epoch is not its own or when a
customer of the call lives in a partition it does not own, so a caller with
an old map refreshes it and routes again instead of reading or writing the
wrong shard.
"""

from __future__ import annotations

from actors.replies import StaleEpoch
from models.partitioning import PartitionMap, partition_of


class Ownership:
    """One shard's view of the partition map."""

    def __init__(self, index: int, pmap: dict) -> None:
        self.index = index
        self.set_map(pmap)

    def set_map(self, pmap: dict) -> None:
        self.map = PartitionMap(pmap["epoch"], tuple(pmap["owners"]), pmap["shards"])
        self.owned = self.map.partitions_of(self.index)

    @property
    def epoch(self) -> int:
        return self.map.epoch

    def owns(self, customer_id: str) -> bool:
        return partition_of(customer_id, self.map.partitions) in self.owned

    def owner_of(self, customer_id: str) -> int:
        return self.map.shard_of(customer_id)

    def check(self, epoch: int, *customer_ids: str) -> StaleEpoch | None:
        """``StaleEpoch`` unless the caller's epoch is ours and we own every customer."""
        if epoch != self.map.epoch or not all(self.owns(c) for c in customer_ids):
            return StaleEpoch(self.map.epoch)
        return None
