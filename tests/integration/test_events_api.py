"""Events and profiles over HTTP against a real local Ray + Serve."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import msgpack
import pytest
import ray
from tests_support import auth_headers

from actors.identity import identity_name
from actors.shard import NAMESPACE, shard_name


def uid(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ev(cid: str, etype: str, **kw) -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": etype, **kw}


async def post_events(client: httpx.AsyncClient, events: list[dict]) -> httpx.Response:
    return await client.post("/v1/events", json={"events": events})


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["shards"] == 2


async def test_events_build_the_profile(client: httpx.AsyncClient) -> None:
    cid = uid()
    now = time.time()
    r = await post_events(
        client,
        [
            ev(cid, "page_view", attributes={"page": "/cards"}, channel="web"),
            ev(cid, "add_to_cart", attributes={"item": "sku-1", "qty": 2, "price": 10.0}),
            ev(cid, "complaint", ts=now - 2 * 3600),
            ev(cid, "credit_check", attributes={"result": "fail"}),
            ev(cid, "opt_out", attributes={"channel": "sms"}),
            ev(cid, "profile_update", attributes={"age": 41, "segment": "family"}),
            ev(cid, "purchase", ts="2026-01-01T10:00:00Z", attributes={"amount": 99.5}),
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 7, "applied": 7, "duplicates": 0}
    p = (await client.get(f"/v1/profiles/{cid}")).json()
    assert p["customer_id"] == cid
    assert p["attributes"]["age"] == 41 and p["attributes"]["credit_check_result"] == "fail"
    assert p["attributes"]["total_spend"] == 99.5
    assert p["consents"] == {"sms": False}
    assert p["counters"]["complaint"] == {"1h": 0, "24h": 1, "7d": 1, "30d": 1}
    assert p["counters"]["page_view"]["1h"] == 1
    assert "purchase" not in p["counters"]  # older than the 30-day horizon
    assert p["session"]["active"] is True
    assert p["session"]["cart"] == {"sku-1": {"qty": 2, "price": 10.0}}
    assert p["session"]["pages"] == ["/cards"]
    assert p["first_seen"] == pytest.approx(1767261600.0)


async def test_retried_batch_is_not_double_counted(client: httpx.AsyncClient) -> None:
    cid = uid()
    batch = [ev(cid, "page_view") for _ in range(3)]
    assert (await post_events(client, batch)).json()["applied"] == 3
    again = (await post_events(client, batch)).json()
    assert again == {"accepted": 3, "applied": 0, "duplicates": 3}
    p = (await client.get(f"/v1/profiles/{cid}")).json()
    assert p["counters"]["page_view"]["1h"] == 3


async def test_read_your_writes_under_concurrent_clients(server: str) -> None:
    customers = [uid("ryw") for _ in range(20)]

    async def polite(send) -> httpx.Response:
        """A client that honours 503 + Retry-After (the per-shard in-flight bound
        answers it while a shard restarted by an earlier test warms up)."""
        for _ in range(20):
            r = await send()
            if r.status_code != 503:
                return r
            await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 10)
        return r

    async def one_client(cid: str) -> None:
        async with httpx.AsyncClient(base_url=server, timeout=30, headers=auth_headers()) as c:
            for i in range(1, 6):
                body = {"events": [ev(cid, "page_view")]}
                r = await polite(lambda b=body: c.post("/v1/events", json=b))
                assert r.status_code == 200, r.text
                p = await polite(lambda: c.get(f"/v1/profiles/{cid}"))
                assert p.status_code == 200, (i, p.status_code, p.text)
                assert p.json()["counters"]["page_view"]["1h"] == i  # read your writes

    await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in customers)), 120)


async def test_each_customer_lives_in_exactly_one_shard(client: httpx.AsyncClient) -> None:
    customers = [uid("own") for _ in range(60)]
    r = await post_events(client, [ev(c, "page_view") for c in customers])
    assert r.status_code == 200
    holdings = [
        set(ray.get(ray.get_actor(shard_name(i), namespace=NAMESPACE).customer_ids.remote()))
        for i in range(2)
    ]
    for c in customers:
        assert sum(c in h for h in holdings) == 1
    assert any(holdings[0] & set(customers)) and any(holdings[1] & set(customers))


async def test_erasure_removes_the_profile(client: httpx.AsyncClient) -> None:
    cid = uid()
    await post_events(client, [ev(cid, "page_view")])
    assert (await client.delete(f"/v1/profiles/{cid}")).status_code == 200
    gone = await client.get(f"/v1/profiles/{cid}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"
    assert (await client.delete(f"/v1/profiles/{cid}")).status_code == 404


async def test_msgpack_request_and_response(client: httpx.AsyncClient) -> None:
    cid = uid()
    body = msgpack.packb({"events": [ev(cid, "page_view", ts=time.time())]})
    r = await client.post(
        "/v1/events", content=body, headers={"content-type": "application/msgpack"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/msgpack")
    assert msgpack.unpackb(r.content)["applied"] == 1
    p = await client.get(f"/v1/profiles/{cid}", headers={"accept": "application/msgpack"})
    assert msgpack.unpackb(p.content)["customer_id"] == cid


async def test_shards_report_stats_and_run_on_uvloop(client: httpx.AsyncClient) -> None:
    stats = (await client.get("/v1/admin/shards")).json()
    assert len(stats["shards"]) == 2
    for s in stats["shards"]:
        assert s["event_loop"].startswith("uvloop")
        assert s["degraded"] is None and s["memory_bytes"] >= 0
        # The actor froze its start-up heap (actors/heap.py): Ray's and the imports' objects.
        assert s["gc_frozen"] > 10_000
        # Its loop is watched for pauses (actors/loopwatch.py) from the first call on.
        assert s["loop"]["wakeups"] > 0 and s["loop"]["pauses"] >= 0
    for i in range(2):  # the identity shards too
        ping = await ray.get_actor(identity_name(i), namespace=NAMESPACE).ping.remote()
        assert ping["gc_frozen"] > 10_000, ping


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/events" in spec["paths"] and "/v1/profiles/{customer_id}" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
