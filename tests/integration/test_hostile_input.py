"""Regressions for what an attacker's probe found: every one gets a 4xx JSON error.

Deep nesting, lone surrogates and NULs, bodies without a JSON content type,
YAML alias bombs and Python tags, model versions with a trailing newline,
server paths in messages, and clients that stop sending mid-request.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import httpx
import pytest
from tests_support import auth_headers, replica_urls

JSON = {"content-type": "application/json"}


def assert_error(r: httpx.Response, status: int, field: str | None, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == (code, field), err


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/events"), ("POST", "/v1/decide"), ("POST", "/v1/decide/batch"),
     ("POST", "/v1/admin/models"), ("PUT", "/v1/admin/catalog")],
)  # fmt: skip
async def test_json_nested_a_thousand_deep_is_400(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    r = await client.request(method, path, content=b'{"events": ' + deep + b"}", headers=JSON)
    assert_error(r, 400, "body", "malformed_body")


def event(**fields: str) -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": "c-ok", "type": "page_view", **fields}


SURROGATE = "\\ud800"  # as written in JSON: a lone high surrogate escape


@pytest.mark.parametrize(
    ("body", "path", "field"),
    [
        ('{"events": [{"event_id": "e1", "customer_id": "c-%s", "type": "page_view"}]}',
         "/v1/events", "events[0].customer_id"),
        ('{"events": [{"event_id": "e-%s", "customer_id": "c", "type": "page_view"}]}',
         "/v1/events", "events[0].event_id"),
        ('{"events": [{"event_id": "e2", "customer_id": "c", "type": "profile_update",'
         ' "attributes": {"k": "v-%s"}}]}', "/v1/events", "events[0].attributes.k"),
        ('{"events": [{"event_id": "e3", "customer_id": "c", "type": "profile_update",'
         ' "attributes": {"k-%s": 1}}]}', "/v1/events", "events[0].attributes"),
        ('{"events": [{"event_id": "e4", "customer_id": "c", "type": "page_view",'
         ' "page": "/p-%s"}]}', "/v1/events", "events[0].page"),
        ('{"events": [{"event_id": "e5", "customer_id": "c", "type": "page_view",'
         ' "identifiers": {"cookie": "k-%s"}}]}', "/v1/events", "events[0].identifiers.cookie"),
        ('{"customer_id": "c-%s", "channel": "web"}', "/v1/decide", "customer_id"),
        ('{"customer_id": "c", "channel": "web-%s"}', "/v1/decide", "channel"),
        ('{"customer_ids": ["a", "c-%s"], "channel": "web"}', "/v1/decide/batch",
         "customer_ids[1]"),
        ('{"version": "v1-%s"}', "/v1/admin/models", "version"),
    ],
)  # fmt: skip
async def test_lone_surrogate_is_400_naming_the_field(
    client: httpx.AsyncClient, body: str, path: str, field: str
) -> None:
    raw = (body % SURROGATE).encode()
    r = await client.post(path, content=raw, headers=JSON)
    assert_error(r, 400, field, "invalid_request")
    assert "surrogate" in r.json()["error"]["message"]


async def test_raw_surrogate_bytes_and_msgpack_are_refused(client: httpx.AsyncClient) -> None:
    # json.loads decodes bytes with surrogatepass: raw ED A0 80 is a surrogate too.
    raw = b'{"customer_id": "c-\xed\xa0\x80", "channel": "web"}'
    assert_error(await client.post("/v1/decide", content=raw, headers=JSON), 400,
                 "customer_id", "invalid_request")  # fmt: skip
    # msgpack strings must be valid UTF-8.
    packed = b"\x82\xabcustomer_id\xa4c-\xed\xa0\xa7channel\xa3web"
    r = await client.post(
        "/v1/decide",
        content=packed,
        headers={"content-type": "application/msgpack", "accept": "application/json"},
    )
    assert_error(r, 400, "body", "malformed_body")


async def test_nul_in_ids_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"events": [event(customer_id="c\x00x")]})
    assert_error(r, 400, "events[0].customer_id", "invalid_request")
    r = await client.post("/v1/decide", json={"customer_id": "c\x00", "channel": "web"})
    assert_error(r, 400, "customer_id", "invalid_request")
    assert_error(await client.get("/v1/profiles/c%00x"), 400, "customer_id", "invalid_request")
    r = await client.get("/v1/profiles", params={"cookie": "a\x00b"})
    assert_error(r, 400, "cookie", "invalid_request")


@pytest.mark.parametrize("ctype", [None, "", "text/plain", "application/x-www-form-urlencoded"])
async def test_body_without_a_json_content_type_is_415(
    client: httpx.AsyncClient, ctype: str | None
) -> None:
    """What a web page can send without a CORS preflight is never parsed."""
    body = b'{"events": [{"event_id": "x", "customer_id": "c", "type": "opt_out"}]}'
    headers = {} if ctype is None else {"content-type": ctype}
    r = await client.post("/v1/events", content=body, headers=headers)
    assert_error(r, 415, "content-type", "unsupported_media_type")


def alias_bomb(depth: int = 6, fanout: int = 9) -> str:
    lines = ['a0: &a0 ["x"]']
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        alias_bomb(),
        "offers: !!python/object/apply:os.getcwd []\n",
        "a: " + "[" * 200 + "]" * 200 + "\n",
    ],
    ids=["alias_bomb", "python_tag", "deep"],
)
async def test_hostile_yaml_catalogue_is_refused_fast(client: httpx.AsyncClient, text: str) -> None:
    before = (await client.get("/v1/catalog")).json()["version"]
    started = time.monotonic()
    r = await client.put(
        "/v1/admin/catalog", content=text, headers={"content-type": "application/yaml"}
    )
    assert_error(r, 400, "body", "malformed_body")
    assert time.monotonic() - started < 5.0
    assert (await client.get("/v1/catalog")).json()["version"] == before


async def test_model_version_with_trailing_newline_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/admin/models", json={"version": "v1\n"})
    assert_error(r, 422, "version", "invalid_model")


async def test_unknown_model_version_names_no_server_path(
    client: httpx.AsyncClient, server_settings
) -> None:
    r = await client.post("/v1/admin/models", json={"version": "v404"})
    assert_error(r, 404, "version", "not_found")
    assert server_settings.model_registry not in r.text
    assert "/" not in r.json()["error"]["message"]


def _held_open_s(payload: bytes, port: int, limit_s: float) -> float:
    """Send ``payload`` and stop; seconds until the server ends the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(payload)
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            return float("inf")
    return time.monotonic() - started


async def test_slow_clients_are_dropped_at_the_edge(server: str, server_settings) -> None:
    """Unfinished headers and truncated bodies do not hold a connection for an hour."""
    port = server_settings.port
    timeout = server_settings.client_timeout_s
    headers_only = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    truncated = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"events": ['
    )
    held = await asyncio.gather(
        asyncio.to_thread(_held_open_s, headers_only, port, timeout * 4),
        asyncio.to_thread(_held_open_s, truncated, port, timeout * 4),
    )
    assert all(s <= timeout * 2.5 for s in held), held


async def test_truncated_bodies_wait_in_haproxy_not_in_the_replicas(server: str, server_settings):
    """Headers then a partial body, held open: no replica spends an in-flight slot on them."""
    key = auth_headers()["Authorization"]
    truncated = (
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f'Authorization: {key}\r\nContent-Length: 1000\r\n\r\n{{"events": ['
    ).encode()
    held = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server_settings.port), timeout=5)
            sock.sendall(truncated)
            held.append(sock)
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=10, headers=auth_headers()) as client:
            inflight = [
                (await client.get(f"{url}/v1/admin/ingress")).json()["inflight"]
                for url in replica_urls(expect=2)
            ]
            # Everyone else is still answered at once.
            r = await client.get(f"{server}/v1/admin/ingress")
            assert r.status_code == 200
    finally:
        for sock in held:
            sock.close()
    # Each replica counts only the request reading its own counters (plus stray
    # traffic of this test session), not the 40 held uploads.
    assert max(inflight) < 10, inflight
