"""A catalogue put through one ingress replica is the one every replica validates with.

Each replica keeps its own copy of the catalogue (request validation,
fallbacks); a copy that lagged used to refuse requests the active catalogue
accepts, until some decision happened to reveal the newer version.
"""

from __future__ import annotations

import asyncio
import copy
import time

import httpx
import pytest
import yaml
from tests_support import auth_headers, replica_urls

from models.settings import DEMO_DIR


@pytest.fixture
async def replicas(server: str):
    clients = [httpx.AsyncClient(base_url=u, timeout=30.0, headers=auth_headers())
               for u in replica_urls(expect=2)]  # fmt: skip
    yield clients
    for c in clients:
        await c.aclose()


def decide_on(channel: str, placement: str) -> dict:
    return {"customer_id": "catalog-replicas", "channel": channel, "placement": placement,
            "deadline_ms": 5000}  # fmt: skip


async def put_catalog(c: httpx.AsyncClient, catalog: dict) -> httpx.Response:
    return await c.put(
        "/v1/admin/catalog",
        content=yaml.safe_dump(catalog),
        headers={"content-type": "application/yaml"},
    )


async def test_a_catalogue_put_through_one_replica_is_used_by_the_other(replicas) -> None:
    demo = yaml.safe_load((DEMO_DIR / "catalog.yaml").read_text())
    c0, c1 = replicas
    assert (await c1.post("/v1/decide", json=decide_on("web", "home_hero"))).status_code == 200
    wider = copy.deepcopy(demo)
    wider["version"] = "replicas-test"
    wider["channels"]["web"]["placements"].append("footer")
    try:
        assert (await put_catalog(c0, wider)).status_code == 200
        # At once: the refusing replica fetches the active catalogue and accepts.
        r = await c1.post("/v1/decide", json=decide_on("web", "footer"))
        assert r.status_code == 200, r.text
    finally:
        assert (await put_catalog(c0, demo)).status_code == 200
    # Within about a second: a placement the active catalogue no longer has is refused.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = await c1.post("/v1/decide", json=decide_on("web", "footer"))
        if r.status_code == 400:
            break
        await asyncio.sleep(0.3)
    assert r.status_code == 400 and r.json()["error"]["field"] == "placement", r.text
    for c in replicas:
        assert (await c.post("/v1/decide", json=decide_on("web", "home_hero"))).status_code == 200
