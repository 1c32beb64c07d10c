"""``ShardCoordinator``: creates the shards and owns the cluster-wide state.

One named, detached coordinator per deployment. It owns the partition map
(with its epoch), the identity shard count, the active catalogue and the
active model version, persists them in ``<data_dir>/coordinator.json``
(written atomically), and pushes activations to every shard.

The map is the truth about where profiles live: a restart uses the stored
map, never a fresh one, so a data directory created with N shards keeps
serving every customer whatever ``shards`` says now (``shards: 0`` uses the
stored count; another explicit count is refused at start-up by
:func:`layout_conflict`, naming both counts). Ingress replicas ask it for the topology (map +
shard handles) once, cache it, and ask again only when a shard says their
epoch is stale or a decision reports a catalogue they do not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import ray

from actors.identity import IdentityShard, identity_name
from actors.replies import Failed, ShardUnavailable
from actors.shard import NAMESPACE, ProfileShard, shard_name
from models.decisioning.catalog import load_catalog
from models.errors import RtimError
from models.learning.registry import ModelRegistry
from models.partitioning import PartitionMap
from models.settings import Settings

log = logging.getLogger("rtim.coordinator")

COORDINATOR_NAME = "rtim-coordinator"
STATE_FILE = "coordinator.json"


def load_state(data_dir: str) -> dict:
    """What ``coordinator.json`` holds ({} for a new data directory)."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def stored_map(settings: Settings) -> PartitionMap | None:
    """The data directory's partition map, or None for a new data directory.

    A directory written before the map was persisted has ``shard-N``
    directories and no map: it was laid out round-robin over that many shards.
    """
    saved = load_state(settings.data_dir).get("map")
    if saved:
        return PartitionMap.from_dict(saved)
    indexes = [int(d.name.removeprefix("shard-")) for d in Path(settings.data_dir).glob("shard-*")
               if d.name.removeprefix("shard-").isdigit()]  # fmt: skip
    if indexes:
        return PartitionMap.initial(settings.partitions, max(indexes) + 1)
    return None


def layout_conflict(settings: Settings) -> str | None:
    """Why these settings cannot serve this data directory, or None.

    Partitions never change (customers would rehash). A shard count other
    than the stored one is refused rather than served partially: the
    partitions of the missing shards would answer 404.
    """
    pmap = stored_map(settings)
    if pmap is None:
        return None
    where = f"data directory {settings.data_dir}"
    if settings.partitions != pmap.partitions:
        return (
            f"{where} was created with {pmap.partitions} partitions but partitions is "
            f"{settings.partitions}; partitions cannot change (customers would rehash): "
            f"set partitions: {pmap.partitions}"
        )
    if settings.shards and settings.shards != pmap.shards:
        return (
            f"{where} holds {pmap.shards} shard(s) (partition map epoch {pmap.epoch}) but "
            f"{settings.shards} shard(s) were asked for; start with --shards {pmap.shards} "
            f"(or shards: 0, which uses the stored count)"
        )
    return None


def shard_count(settings: Settings) -> int:
    """Settings' shard count, or one per CPU Ray sees (at least one)."""
    if settings.shards:
        return settings.shards
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(cpus, settings.partitions))


class ShardCoordinatorImpl:
    def __init__(self, settings: dict) -> None:
        self.settings = Settings.from_dict(settings)
        self.state_path = Path(self.settings.data_dir) / STATE_FILE
        saved = self._load_state()
        self.catalog: dict = saved.get("catalog") or load_catalog(self.settings.catalog).to_dict()
        self.model_version: str = saved.get("model_version") or self.settings.model_version
        if not self.model_version:
            # Pin "the newest" now: a shard restarted later must load the same
            # version, not whatever is newest in the registry by then.
            self.model_version = newest_model(self.settings)
        # The stored map, never a fresh one: a fresh map over another shard
        # count would leave some partitions' data unserved.
        stored = stored_map(self.settings)
        if stored is not None and self.settings.shards not in (0, stored.shards):
            log.error("%s shards asked for, %s stored: serving the stored map",
                      self.settings.shards, stored.shards)  # fmt: skip
        self.map = stored or PartitionMap.initial(
            self.settings.partitions, shard_count(self.settings)
        )
        # Identity entries are placed by partition modulo this count, which
        # therefore never changes for a data directory.
        self.identity_count: int = saved.get("identity_shards") or self.map.shards
        self._save_state()
        self.shards = [self._shard(i) for i in range(self.map.shards)]
        self.identity_shards = [self._identity_shard(i) for i in range(self.identity_count)]

    def _load_state(self) -> dict:
        return load_state(self.settings.data_dir)

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        data = {
            "catalog": self.catalog,
            "model_version": self.model_version,
            "map": self.map.to_dict(),
            "identity_shards": self.identity_count,
        }
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    @staticmethod
    def _options(name: str) -> dict[str, Any]:
        """Shard actors: named, detached, restarted without limit, spread over nodes."""
        return {
            "name": name,
            "namespace": NAMESPACE,
            "get_if_exists": True,
            "lifetime": "detached",
            "max_restarts": -1,
            "max_task_retries": 0,
            "num_cpus": 0,
            "max_concurrency": 1000,
            "scheduling_strategy": "SPREAD",
        }

    def _shard(self, index: int) -> Any:
        return ProfileShard.options(**self._options(shard_name(index))).remote(
            index, self.settings.to_dict(), self.map.to_dict(), self.catalog, self.model_version
        )

    def _identity_shard(self, index: int) -> Any:
        return IdentityShard.options(**self._options(identity_name(index))).remote(
            index, self.settings.to_dict(), self.settings.identity or None
        )

    async def topology(self) -> dict[str, Any]:
        """The partition map and the profile and identity shard handles, index-aligned.

        This is the one way to find shard actors: ingress replicas and shards
        ask it and cache the answer.
        """
        return {
            "map": self.map.to_dict(),
            "shards": self.shards,
            "identity_shards": self.identity_shards,
        }

    async def wait_ready(self, timeout_s: float = 60.0) -> list[dict]:
        pings = await asyncio.wait_for(
            asyncio.gather(*(s.ping.remote() for s in [*self.shards, *self.identity_shards])),
            timeout_s,
        )
        return list(pings[: len(self.shards)])

    async def get_catalog(self) -> dict:
        return self.catalog

    async def versions(self) -> dict[str, Any]:
        return {"catalog_version": self.catalog.get("version"), "model_version": self.model_version}

    async def _broadcast(self, method: str, arg: Any) -> list[dict]:
        """Every shard's answer; a refusal becomes ``{"shard": i, "error": message}``."""
        results = await asyncio.gather(*(getattr(s, method).remote(arg) for s in self.shards))
        return [r if isinstance(r, dict) else {"shard": i, "error": _reason(r)}
                for i, r in enumerate(results)]  # fmt: skip

    async def set_catalog(self, data: dict) -> dict[str, Any]:
        """Persist and push a catalogue (already validated by the caller)."""
        self.catalog = data
        self._save_state()
        results = await self._broadcast("set_catalog", data)
        return {"catalog_version": data.get("version"), "shards": results}

    async def set_model(self, version: str) -> dict[str, Any]:
        """Activate a model version on every shard; persist it if all took it."""
        results = await self._broadcast("set_model", version)
        if all("model_version" in r for r in results):
            self.model_version = version
            self._save_state()
        return {"model_version": version, "shards": results}


ShardCoordinator = ray.remote(ShardCoordinatorImpl)


def _reason(reply: Any) -> str:
    if isinstance(reply, ShardUnavailable):
        return reply.reason
    if isinstance(reply, Failed):
        return reply.message
    return repr(reply)


def newest_model(settings: Settings) -> str:
    """The registry's newest version, or "" (prior scorer) when there is none."""
    try:
        return ModelRegistry(settings.model_registry).latest_version() or ""
    except RtimError:
        return ""


def get_or_create_coordinator(settings: Settings) -> Any:
    return ShardCoordinator.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
    ).remote(settings.to_dict())
