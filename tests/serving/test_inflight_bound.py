"""The per-replica in-flight bound answers 503 + Retry-After beyond its limit."""

from __future__ import annotations

import asyncio

import httpx

from models.settings import load_settings
from serving.app import InflightBound
from serving.ingress import Ingress


async def test_requests_beyond_the_bound_get_a_json_503() -> None:
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    ingress = Ingress(load_settings(None, {"max_inflight_per_replica": 2}), metrics=False)
    bounded = InflightBound(slow_app, ingress)
    transport = httpx.ASGITransport(app=bounded)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = [asyncio.create_task(c.get("/v1/anything")) for _ in range(2)]
        await asyncio.sleep(0.05)
        third = await c.get("/v1/anything")
        assert third.status_code == 503
        assert third.json()["error"]["code"] == "overloaded"
        assert third.headers["retry-after"] == "1"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
    assert ingress.inflight == 0
