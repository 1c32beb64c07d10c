"""The coordinator: shard count, newest model, and the live topology of the test server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import ray

from actors.coordinator import COORDINATOR_NAME, newest_model, shard_count
from actors.shard import NAMESPACE
from models.partitioning import PartitionMap
from models.settings import DEMO_DIR, Settings, load_settings


def test_configured_shard_count_is_used_as_is() -> None:
    assert shard_count(load_settings(None, {"shards": 3, "partitions": 16})) == 3


def test_newest_model_of_the_bundled_registry_is_its_latest_version() -> None:
    assert newest_model(load_settings(None, {})) == "v1"


def test_newest_model_is_the_highest_version_in_natural_order(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    for version in ("v1", "v9", "v10"):
        shutil.copytree(DEMO_DIR / "registry" / "v1", registry / version)
    assert newest_model(load_settings(None, {"model_registry": str(registry)})) == "v10"


def test_no_model_versions_means_the_prior_scorer(tmp_path: Path) -> None:
    empty = tmp_path / "registry"
    empty.mkdir()
    assert newest_model(load_settings(None, {"model_registry": str(empty)})) == ""
    missing = tmp_path / "nowhere"
    assert newest_model(load_settings(None, {"model_registry": str(missing)})) == ""


def coordinator() -> Any:
    """The test server's coordinator, found by name as shards find it."""
    return ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)


async def test_topology_names_one_profile_and_one_identity_shard_per_map_shard(
    server: str, server_settings: Settings
) -> None:
    topo = await coordinator().topology.remote()
    m = topo["map"]
    pmap = PartitionMap(m["epoch"], tuple(m["owners"]), m["shards"])
    assert pmap.shards == len(topo["shards"]) == len(topo["identity_shards"])
    assert pmap.shards == server_settings.shards
    assert pmap.partitions == server_settings.partitions
    assert pmap.epoch >= 1
    assert set(pmap.owners) == set(range(pmap.shards))
    pings = [await s.ping.remote() for s in topo["shards"]]
    assert [p["shard"] for p in pings] == list(range(pmap.shards))
    assert {p["epoch"] for p in pings} == {pmap.epoch}
    ids = [await s.ping.remote() for s in topo["identity_shards"]]
    assert [p["identity_shard"] for p in ids] == list(range(pmap.shards))


async def test_versions_agree_with_the_admin_api(server: str, client: httpx.AsyncClient) -> None:
    versions = await coordinator().versions.remote()
    r = await client.get("/v1/admin/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert versions["model_version"] == body["active"]
    assert body["active"] in body["available"]
    assert versions["catalog_version"]


def test_shard_count_follows_the_cpus_ray_sees_when_unset(
    server: str, server_settings: Settings
) -> None:
    cpus = int(ray.cluster_resources()["CPU"])
    auto = Settings.from_dict({**server_settings.to_dict(), "shards": 0})
    assert shard_count(auto) == max(1, min(cpus, auto.partitions))
    few = Settings.from_dict({**server_settings.to_dict(), "shards": 0, "partitions": 1})
    assert shard_count(few) == 1
