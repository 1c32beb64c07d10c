"""Fault injection against the real server: killed actors, failing disks, erasure on disk."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import ray
from tests_support import auth_headers

from actors.shard import NAMESPACE, shard_dir, shard_name
from models.partitioning import PartitionMap

SHARDS = 2


def ev(cid: str, etype: str = "page_view") -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": etype}


async def post_until_acked(c: httpx.AsyncClient, batch: list[dict], deadline: float) -> int:
    """Post a batch, retrying the same event ids until acknowledged; return tries."""
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        try:
            r = await c.post("/v1/events", json={"events": batch})
            if r.status_code == 200:
                return tries
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("batch never acknowledged")


def customers_on(shard: int, settings, n: int, prefix: str) -> list[str]:
    pmap = PartitionMap.initial(settings.partitions, SHARDS)
    out, i = [], 0
    while len(out) < n:
        cid = f"{prefix}-{uuid.uuid4().hex[:8]}-{i}"
        i += 1
        if pmap.shard_of(cid) == shard:
            out.append(cid)
    return out


async def stream_while(
    server: str, customers: list[str], batches: int, fault, fault_after: int
) -> dict[str, int]:
    """Each customer's client posts ``batches`` batches of 2 events; inject ``fault`` midway."""
    sent = dict.fromkeys(customers, 0)
    deadline = time.monotonic() + 120

    async def client(cid: str) -> None:
        async with httpx.AsyncClient(base_url=server, timeout=10, headers=auth_headers()) as c:
            for _ in range(batches):
                batch = [ev(cid), ev(cid)]
                await post_until_acked(c, batch, deadline)
                sent[cid] += len(batch)

    async def injector() -> None:
        while sum(sent.values()) < fault_after:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(fault)

    await asyncio.wait_for(asyncio.gather(injector(), *(client(c) for c in customers)), 150)
    return sent


async def test_killed_shard_recovers_every_acknowledged_event_exactly_once(
    server: str, server_settings, client: httpx.AsyncClient
) -> None:
    victims = customers_on(0, server_settings, 6, "kill")
    others = customers_on(1, server_settings, 2, "kill")

    def kill_shard() -> None:
        ray.kill(ray.get_actor(shard_name(0), namespace=NAMESPACE), no_restart=False)

    before = (await client.get("/v1/admin/shards")).json()["shards"][0]["pid"]
    sent = await stream_while(server, victims + others, 15, kill_shard, 40)
    after = (await client.get("/v1/admin/shards")).json()["shards"][0]
    assert after["pid"] != before, "the shard actor was not restarted"
    for cid, n in sent.items():
        p = (await client.get(f"/v1/profiles/{cid}")).json()
        assert p["counters"]["page_view"]["1h"] == n, cid


async def test_killed_ingress_replica_loses_nothing(server: str, client) -> None:
    customers = [f"replica-{uuid.uuid4().hex[:8]}" for _ in range(6)]

    def kill_replica() -> None:
        names = ray.util.list_named_actors(all_namespaces=True)
        replicas = [
            a for a in names if "Ingress" in a["name"] and a["name"].startswith("SERVE_REPLICA")
        ]
        assert replicas, names
        r = replicas[0]
        ray.kill(ray.get_actor(r["name"], namespace=r["namespace"]), no_restart=True)

    sent = await stream_while(server, customers, 12, kill_replica, 30)
    for cid, n in sent.items():
        p = (await client.get(f"/v1/profiles/{cid}")).json()
        assert p["counters"]["page_view"]["1h"] == n, cid


async def test_failing_disk_answers_503_and_never_acknowledges(
    server: str, server_settings, client: httpx.AsyncClient
) -> None:
    cid = customers_on(1, server_settings, 1, "disk")[0]
    assert (await client.post("/v1/events", json={"events": [ev(cid)]})).status_code == 200
    d = shard_dir(server_settings.data_dir, 1)
    # A snapshot rotates the journal: the next write opens segment <snapshot>+1.
    # Make that segment a /dev/full, whose writes fail with ENOSPC.
    assert (await client.post("/v1/admin/snapshot")).status_code == 200
    nxt = max(int(p.name[9:17]) for p in d.glob("snapshot-*.msgpack")) + 1
    # A few segments ahead, in case a background snapshot rotates once more.
    links = [d / f"journal-{n:08d}.log" for n in range(nxt, nxt + 4)]
    for link in links:
        link.symlink_to("/dev/full")
    try:
        r = await client.post("/v1/events", json={"events": [ev(cid)]})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_unavailable"
        assert "Retry-After" in r.headers
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "1" in ready.json()["degraded"]
    finally:
        for link in links:
            link.unlink(missing_ok=True)
    # Once the disk works again a snapshot saves memory and the shard recovers.
    deadline = time.monotonic() + 30
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "shard did not leave the degraded state"
        await asyncio.sleep(0.5)
    assert (await client.post("/v1/events", json={"events": [ev(cid)]})).status_code == 200


async def test_erasure_leaves_no_trace_on_disk_after_snapshot(
    server_settings, client: httpx.AsyncClient
) -> None:
    cid = f"erase-me-{uuid.uuid4().hex}"
    await client.post("/v1/events", json={"events": [ev(cid), ev(cid, "complaint")]})
    assert (await client.delete(f"/v1/profiles/{cid}")).status_code == 200
    r = await client.post("/v1/admin/snapshot")
    assert r.status_code == 200, r.text
    needle = cid.encode()
    files = [p for p in Path(server_settings.data_dir).rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if needle in p.read_bytes()]


async def test_overloaded_shard_answers_503_and_applies_nothing_it_refused(
    server: str, server_settings, client: httpx.AsyncClient
) -> None:
    # The bound is per ingress replica and shard (README, Configuration): each
    # replica admits max_inflight_per_shard calls to shard 0 at once.
    limit = server_settings.max_inflight_per_shard * server_settings.ingress_replicas
    customers = customers_on(0, server_settings, limit + 24, "busy")
    shard = ray.get_actor(shard_name(0), namespace=NAMESPACE)
    await shard.set_slow.remote(0.3)
    try:
        async with httpx.AsyncClient(
            base_url=server,
            timeout=30,
            limits=httpx.Limits(max_connections=200),
            headers=auth_headers(),
        ) as c:
            answers = await asyncio.gather(
                *(c.post("/v1/events", json={"events": [ev(cid)]}) for cid in customers)
            )
    finally:
        await shard.set_slow.remote(0.0)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) <= limit
    for cid, r in zip(customers, answers):
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded"
            assert int(r.headers["Retry-After"]) >= 1
            assert (await client.get(f"/v1/profiles/{cid}")).status_code == 404
        else:
            assert (await client.get(f"/v1/profiles/{cid}")).status_code == 200
