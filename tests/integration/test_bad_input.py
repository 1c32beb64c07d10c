"""Every malformed request gets a 4xx with a JSON error naming the problem."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest


def good(cid: str = "bad-input-c") -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}


def assert_error(r: httpx.Response, status: int, field: str | None, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"}
    assert err["message"]
    assert err["field"] == field
    if code:
        assert err["code"] == code


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"customer_id": "c", "type": "page_view"}, "events[1].event_id"),
        ({"event_id": "e", "type": "page_view"}, "events[1].customer_id"),
        ({"event_id": "e", "customer_id": 5, "type": "page_view"}, "events[1].customer_id"),
        ({"event_id": "e", "customer_id": "c", "type": "teleport"}, "events[1].type"),
        ({"event_id": "e", "customer_id": "c"}, "events[1].type"),
        ({"event_id": "e", "customer_id": "c", "type": "page_view", "ts": "yesterday"},
         "events[1].ts"),
        ({"event_id": "e", "customer_id": "c", "type": "page_view", "ts": [1]}, "events[1].ts"),
        ({"event_id": "e", "customer_id": "c", "type": "page_view", "ts": 4e12}, "events[1].ts"),
        ({"event_id": "e", "customer_id": "c", "type": "page_view", "attributes": []},
         "events[1].attributes"),
        ({"event_id": "e", "customer_id": "c", "type": "credit_check",
          "attributes": {"result": "maybe"}}, "events[1].attributes.result"),
        ({"event_id": "e", "customer_id": "c", "type": "response",
          "attributes": {"outcome": "accepted"}}, "events[1].offer_id"),
        ({"event_id": "e", "customer_id": "c", "type": "add_to_cart",
          "attributes": {"item": "x", "qty": -1}}, "events[1].attributes.qty"),
        ({"event_id": "e", "customer_id": "c", "type": "opt_out"}, "events[1].attributes.channel"),
        ({"event_id": "e", "customer_id": "c", "type": "profile_update",
          "attributes": {"n": 10**30}}, "events[1].attributes.n"),
        ({"event_id": "e", "customer_id": "c", "type": "add_to_cart",
          "attributes": {"item": "x", "qty": 10**7}}, "events[1].attributes.qty"),
        ({"event_id": "e", "customer_id": "c", "type": "purchase",
          "attributes": {"amount": 1e300}}, "events[1].attributes.amount"),
        ("not an object", "events[1]"),
    ],
)  # fmt: skip
async def test_invalid_event_rejects_whole_batch(
    client: httpx.AsyncClient, event: object, field: str
) -> None:
    cid = f"batch-{uuid.uuid4().hex[:8]}"
    r = await client.post("/v1/events", json={"events": [good(cid), event]})
    assert_error(r, 400, field, "invalid_request")
    # Nothing of the batch was applied, not even the valid first event.
    assert (await client.get(f"/v1/profiles/{cid}")).status_code == 404


async def test_bad_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/events", content=b'{"events": [', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "body", "malformed_body")


async def test_bad_msgpack(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/events",
        content=b"\xc1\xc1",
        headers={"content-type": "application/msgpack", "accept": "application/json"},
    )
    assert_error(r, 400, "body", "malformed_body")


async def test_empty_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", content=b"", headers={"content-type": "application/json"})
    assert_error(r, 400, "body", "malformed_body")


@pytest.mark.parametrize(
    "body",
    [[], {"events": "x"}, {"events": []}, {"evnts": []}, 42],
)
async def test_wrong_shapes(client: httpx.AsyncClient, body: object) -> None:
    r = await client.post("/v1/events", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"


async def test_unsupported_content_type(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", content=b"a=b", headers={"content-type": "text/plain"})
    assert_error(r, 415, "content-type", "unsupported_media_type")


async def test_body_over_size_limit(client: httpx.AsyncClient, server_settings) -> None:
    pad = "x" * 1000
    events = [dict(good(), attributes={"p": pad}) for _ in range(300)]
    r = await client.post("/v1/events", json={"events": events})
    assert_error(r, 413, "body", "payload_too_large")


async def test_batch_over_batch_limit(client: httpx.AsyncClient, server_settings) -> None:
    n = server_settings.max_batch_events + 1
    events = [{"event_id": str(i), "customer_id": "c", "type": "complaint"} for i in range(n)]
    r = await client.post("/v1/events", json={"events": events})
    assert_error(r, 413, "events", "batch_too_large")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nothing")
    assert_error(r, 404, None, "not_found")
    r = await client.put("/v1/events", json={})
    assert_error(r, 405, None, "method_not_allowed")


async def test_unknown_profile_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/profiles/never-seen-" + str(time.time()))
    assert_error(r, 404, "customer_id", "not_found")
