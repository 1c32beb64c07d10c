"""API keys against the real server: 401/403, scopes per route, revocation on
every replica within seconds, per-key rate limits and the audit trail."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from tests_support import auth_headers, replica_urls

from models.access import KeyStore
from models.audit import pseudonym


async def new_key(server_settings, scopes: str, **limits: float) -> tuple[str, str]:
    """A key made as ``rtim keys create`` does; replicas see it within a second."""
    name = f"k-{uuid.uuid4().hex[:8]}"
    _, secret = KeyStore(server_settings.data_dir).create(name, scopes, **limits)
    await asyncio.sleep(1.2)
    return name, secret


async def until_status(c: httpx.AsyncClient, url: str, headers: dict, status: int) -> float:
    """Seconds until ``GET url`` answers ``status`` (bounded: 15 s)."""
    started = time.monotonic()
    while time.monotonic() - started < 15.0:
        if (await c.get(url, headers=headers)).status_code == status:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}")


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    return err


async def test_missing_or_wrong_key_is_401(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30) as c:
        for path in ("/noop", "/v1/catalog", "/v1/profiles/x", "/v1/admin/shards"):
            r = await c.get(path)
            assert_error(r, 401, "unauthenticated")
            assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer rtim_000000000000_" + "x" * 43}
        assert_error(await c.get("/noop", headers=wrong), 401, "unauthenticated")
        assert_error(await c.get("/noop", headers={"X-API-Key": "nope"}), 401, "unauthenticated")
        r = await c.post("/v1/events", json={"events": []})
        assert_error(r, 401, "unauthenticated")


async def test_health_and_docs_are_public(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30) as c:
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert (await c.get(path)).status_code == 200, path
        schemes = (await c.get("/openapi.json")).json()["components"]["securitySchemes"]
        assert {"bearer", "apiKey"} <= set(schemes)


async def test_channel_key_reaches_only_its_scopes(server: str, server_settings) -> None:
    _, secret = await new_key(server_settings, "decide,events:write")
    cid = f"scoped-{uuid.uuid4().hex[:8]}"
    ev = {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}
    async with httpx.AsyncClient(base_url=server, timeout=30) as c:
        h = {"X-API-Key": secret}  # the second header form
        assert (await c.post("/v1/events", json={"events": [ev]}, headers=h)).status_code == 200
        r = await c.post("/v1/decide", json={"customer_id": cid, "channel": "web"}, headers=h)
        assert r.status_code == 200, r.text
        assert (await c.get("/noop", headers=h)).status_code == 200
        for method, path, scope in [
            ("GET", f"/v1/profiles/{cid}", "profiles:read"),
            ("GET", f"/v1/profiles/{cid}/decisions", "profiles:read"),
            ("DELETE", f"/v1/profiles/{cid}", "profiles:erase"),
            ("GET", f"/v1/decisions/{r.json()['decision_id']}", "reports:read"),
            ("GET", "/v1/admin/shards", "admin"),
            ("PUT", "/v1/admin/catalog", "admin"),
            ("GET", "/v1/admin/audit", "admin"),
        ]:
            err = assert_error(await c.request(method, path, headers=h), 403, "forbidden")
            assert repr(scope) in err["message"], (path, err)
    # A reader may read but not erase.
    _, reader = await new_key(server_settings, "profiles:read")
    async with httpx.AsyncClient(base_url=server, timeout=30, headers=auth_headers(reader)) as c:
        assert (await c.get(f"/v1/profiles/{cid}")).status_code == 200
        err = assert_error(await c.delete(f"/v1/profiles/{cid}"), 403, "forbidden")
        assert "'profiles:erase'" in err["message"]
        # The fast lane's routes check the scope like the router's (same error body).
        for path, body in [
            ("/v1/decide", {"customer_id": cid, "channel": "web"}),
            ("/v1/decide/batch", {"customer_ids": [cid], "channel": "web"}),
            ("/v1/events", {"events": [ev]}),
        ]:
            err = assert_error(await c.post(path, json=body), 403, "forbidden")
            assert "'decide'" in err["message"] or "'events:write'" in err["message"], err
    async with httpx.AsyncClient(base_url=server, timeout=30) as c:
        err = assert_error(await c.post("/v1/decide/batch", json={"customer_ids": [cid]}), 401,
                           "unauthenticated")  # fmt: skip


async def test_revoked_key_stops_working_on_every_replica(server_settings) -> None:
    name, secret = await new_key(server_settings, "decide")
    urls = replica_urls(expect=2)
    assert len(urls) == 2, urls
    h = auth_headers(secret)
    async with httpx.AsyncClient(timeout=10) as c:
        for url in urls:
            await until_status(c, f"{url}/noop", h, 200)
        KeyStore(server_settings.data_dir).revoke(name)
        took = [await until_status(c, f"{url}/noop", h, 401) for url in urls]
    assert max(took) < 5.0, took


async def test_rate_limit_answers_429_with_retry_after(server_settings) -> None:
    # 2 rps, burst 4 per key: each of the 2 replicas allows 1 rps, burst 2.
    _, secret = await new_key(server_settings, "decide", rps=2, burst=4)
    url = replica_urls(expect=2)[0]
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=auth_headers(secret)) as c:
        codes = [(await c.get("/noop")) for _ in range(8)]
        limited = [r for r in codes if r.status_code == 429]
        assert 1 <= sum(r.status_code == 200 for r in codes) <= 3
        assert limited, [r.status_code for r in codes]
        assert_error(limited[0], 429, "rate_limited")
        assert int(limited[0].headers["retry-after"]) >= 1
        # Other keys are not slowed down by this one.
        other = await c.get("/noop", headers=auth_headers())
        assert other.status_code == 200
        await asyncio.sleep(float(limited[0].headers["retry-after"]) + 0.2)
        assert (await c.get("/noop")).status_code == 200


async def test_changes_and_erasures_are_audited(client: httpx.AsyncClient) -> None:
    cid = f"audited-{uuid.uuid4().hex[:8]}"
    ev = {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}
    assert (await client.post("/v1/events", json={"events": [ev]})).status_code == 200
    assert (await client.delete(f"/v1/profiles/{cid}")).status_code == 200
    catalog = (await client.get("/v1/catalog")).json()
    assert (await client.put("/v1/admin/catalog", json=catalog)).status_code == 200
    bad = await client.put("/v1/admin/catalog", json={"offers": 5})
    assert bad.status_code == 422
    assert (await client.post("/v1/admin/models", json={"version": "v1"})).status_code == 200
    r = await client.get("/v1/admin/audit", params={"limit": 50})
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert all(e["who"] == "tests" for e in entries[:4])
    erase = next(e for e in entries if e["action"] == "profile.erase")
    assert erase["target"] == pseudonym(cid) and erase["result"] == "erased"
    assert cid not in r.text  # the erased id itself is never written
    actions = [(e["action"], e["result"]) for e in entries[:4]]
    assert ("catalog.replace", "ok") in actions
    assert ("catalog.replace", "refused: invalid_catalog") in actions
    assert ("model.activate", "ok") in actions
    assert entries == sorted(entries, key=lambda e: -e["ts"])
    only = (await client.get("/v1/admin/audit", params={"action": "profile.erase"})).json()
    assert {e["action"] for e in only["entries"]} == {"profile.erase"}


@pytest.mark.parametrize("limit", [0, 1001, "x"])
async def test_audit_limit_is_checked(client: httpx.AsyncClient, limit: object) -> None:
    r = await client.get("/v1/admin/audit", params={"limit": limit})
    assert_error(r, 400, "invalid_request")
