"""``ShardCoordinator``: creates the shards and owns the partition map.

One named, detached coordinator per deployment. Ingress replicas ask it for
the topology (map + shard handles) once, cache it, and ask again only when a
shard says their epoch is stale. Shards are created here, named
``rtim-shard-<i>``, with unlimited restarts, spread over the cluster's nodes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from actors.shard import NAMESPACE, ProfileShard, shard_name
from models.partitioning import PartitionMap
from models.settings import Settings

COORDINATOR_NAME = "rtim-coordinator"


def shard_count(settings: Settings) -> int:
    """Settings' shard count, or one per CPU Ray sees (at least one)."""
    if settings.shards:
        return settings.shards
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(cpus, settings.partitions))


class ShardCoordinatorImpl:
    def __init__(self, settings: dict) -> None:
        self.settings = Settings.from_dict(settings)
        n = shard_count(self.settings)
        self.map = PartitionMap.initial(self.settings.partitions, n)
        self.shards = [self._shard(i) for i in range(n)]

    def _shard(self, index: int) -> Any:
        return ProfileShard.options(
            name=shard_name(index),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            max_concurrency=1000,
            scheduling_strategy="SPREAD",
        ).remote(index, self.settings.to_dict(), self.map.to_dict())

    async def topology(self) -> dict[str, Any]:
        """The partition map and the shard handles, index-aligned."""
        return {"map": self.map.to_dict(), "shards": self.shards}

    async def wait_ready(self, timeout_s: float = 60.0) -> list[dict]:
        return await asyncio.wait_for(
            asyncio.gather(*(s.ping.remote() for s in self.shards)), timeout_s
        )


ShardCoordinator = ray.remote(ShardCoordinatorImpl)


def get_or_create_coordinator(settings: Settings) -> Any:
    return ShardCoordinator.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
    ).remote(settings.to_dict())
