"""The per-replica in-flight bound answers 503 + Retry-After beyond its limit."""

from __future__ import annotations

import asyncio

import httpx

from serving import app as app_module


async def test_requests_beyond_the_bound_get_a_json_503() -> None:
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    bounded = app_module.InflightBound(slow_app)
    old = dict(app_module._limits)
    app_module._limits.update(max_inflight=2, inflight=0)
    try:
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
        assert app_module._limits["inflight"] == 0
    finally:
        app_module._limits.clear()
        app_module._limits.update(old)
