"""Customer recognition over HTTP: identifiers, anonymous-to-known merges, erasure."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from tests_support import auth_headers, on_other_shards

from models.identity.config import identifier_key, new_profile_id


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ev(etype: str, identifiers: dict | None = None, customer_id: str | None = None, **kw) -> dict:
    out: dict = {"event_id": uuid.uuid4().hex, "type": etype, **kw}
    if identifiers:
        out["identifiers"] = identifiers
    if customer_id:
        out["customer_id"] = customer_id
    return out


async def post(client: httpx.AsyncClient, *events: dict) -> dict:
    r = await client.post("/v1/events", json={"events": list(events)})
    assert r.status_code == 200, r.text
    return r.json()


async def test_abandoned_cart_visit_follows_the_customer_after_login(client) -> None:
    cookie, account = uid("ck"), uid("acct")
    await post(
        client,
        ev("page_view", {"cookie": cookie}, attributes={"page": "/cards"}),
        ev("page_view", {"cookie": cookie}, attributes={"page": "/cards/gold"}),
        ev("add_to_cart", {"cookie": cookie}, attributes={"item": "gold-card", "price": 0}),
    )
    anon = (await client.get("/v1/profiles", params={"cookie": cookie})).json()
    assert anon["customer_id"] == new_profile_id("cookie", cookie)
    await post(client, ev("profile_update", customer_id=account, attributes={"age": 35}))
    r = await post(client, ev("identify", {"cookie": cookie, "account": account}))
    assert r["identity"]["merged"] == [anon["customer_id"]]
    p = (await client.get(f"/v1/profiles/{account}")).json()
    assert p["counters"]["page_view"]["1h"] == 2
    assert p["session"]["cart"] == {"gold-card": {"qty": 1, "price": 0}}
    assert p["session"]["pages"] == ["/cards", "/cards/gold"]
    assert p["attributes"]["age"] == 35
    assert p["identifiers"] == {"account": [account], "cookie": [cookie]}
    # The cookie now finds the known customer, and a decide by cookie uses it.
    assert (await client.get("/v1/profiles", params={"cookie": cookie})).json()[
        "customer_id"
    ] == account
    r = await client.post("/v1/decide", json={"identifiers": {"cookie": cookie},
                                              "channel": "web", "deadline_ms": 5000})  # fmt: skip
    assert r.status_code == 200 and r.json()["customer_id"] == account


async def test_merge_across_shards_under_concurrent_events_loses_and_doubles_nothing(
    server: str, server_settings, client: httpx.AsyncClient
) -> None:
    cookie, account = on_other_shards(server_settings)
    await post(client, ev("page_view", {"cookie": cookie}))
    await post(client, ev("page_view", customer_id=account))
    acked = {"n": 2}
    deadline = time.monotonic() + 60

    async def stream(identifiers: dict, n: int) -> None:
        async with httpx.AsyncClient(base_url=server, timeout=10, headers=auth_headers()) as c:
            for _ in range(n):
                batch = {"events": [ev("page_view", identifiers)]}
                while time.monotonic() < deadline:
                    r = await c.post("/v1/events", json=batch)
                    if r.status_code == 200:
                        acked["n"] += 1
                        break
                    await asyncio.sleep(0.05)  # retry the same event id

    async def link() -> None:
        await asyncio.sleep(0.3)
        await post(client, ev("identify", {"cookie": cookie, "account": account}))

    await asyncio.gather(stream({"cookie": cookie}, 40), stream({"account": account}, 40), link())
    p = (await client.get(f"/v1/profiles/{account}")).json()
    assert p["counters"]["page_view"]["1h"] == acked["n"] == 82
    anon = new_profile_id("cookie", cookie)
    # The anonymous id now answers with the merged profile too.
    assert (await client.get(f"/v1/profiles/{anon}")).json()["customer_id"] == account


async def test_caps_after_merge_count_impressions_of_the_anonymous_profile(client) -> None:
    cookie, account = uid("ck"), uid("acct")
    body = {"identifiers": {"cookie": cookie}, "channel": "email", "deadline_ms": 5000}
    first = (await client.post("/v1/decide", json=body)).json()
    assert first["offers"], first  # one email this week, to the anonymous visitor
    await post(client, ev("profile_update", customer_id=account, attributes={"age": 50}))
    await post(client, ev("identify", {"cookie": cookie, "account": account}))
    again = await client.post(
        "/v1/decide",
        json={"customer_id": account, "channel": "email", "explain": True, "deadline_ms": 5000},
    )
    d = again.json()
    assert d["offers"] == []
    assert "email_weekly" in {t.get("rule") for t in d["trace"]}


async def test_repeated_identify_is_a_no_op_and_conflicting_accounts_never_merge(client) -> None:
    cookie, a1, a2 = uid("ck"), uid("acct"), uid("acct")
    await post(client, ev("page_view", {"cookie": cookie}))
    await post(client, ev("page_view", customer_id=a1))
    await post(client, ev("page_view", customer_id=a2))
    first = await post(client, ev("identify", {"cookie": cookie, "account": a1}))
    assert "identity" in first
    again = await post(client, ev("identify", {"cookie": cookie, "account": a1}))
    assert "identity" not in again
    assert (await client.get(f"/v1/profiles/{a1}")).json()["counters"]["page_view"]["1h"] == 2
    r = await client.post("/v1/events", json={"events": [
        ev("identify", {"cookie": cookie, "account": a2})]})  # fmt: skip
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "identity_conflict" and err["field"] == "events[0].identifiers.account"
    assert (await client.get(f"/v1/profiles/{a2}")).json()["counters"]["page_view"]["1h"] == 1
    assert (await client.get(f"/v1/profiles/{a1}")).json()["identifiers"]["account"] == [a1]


async def test_erasure_removes_identifiers_and_the_cookie_starts_afresh(client) -> None:
    cookie, account = uid("ck"), uid("acct")
    await post(client, ev("page_view", {"cookie": cookie}), ev("complaint", {"cookie": cookie}))
    await post(client, ev("identify", {"cookie": cookie, "account": account}))
    r = await client.delete(f"/v1/profiles/{account}")
    assert r.status_code == 200 and sorted(r.json()["identifiers"]) == sorted(
        [identifier_key("cookie", cookie), identifier_key("account", account)]
    )
    assert (await client.get("/v1/profiles", params={"cookie": cookie})).status_code == 404
    await post(client, ev("page_view", {"cookie": cookie}))
    fresh = (await client.get("/v1/profiles", params={"cookie": cookie})).json()
    assert fresh["customer_id"] != account
    assert fresh["counters"] == {"page_view": {"1h": 1, "24h": 1, "7d": 1, "30d": 1}}
    assert fresh["identifiers"] == {"cookie": [cookie]}


async def test_bad_identifiers_are_rejected(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"events": [ev("page_view", {"fax": "1"})]})
    assert r.status_code == 400 and r.json()["error"]["field"].startswith("events[0].identifiers")
    r = await client.post("/v1/events", json={"events": [ev("identify")]})
    assert r.status_code == 400
    r = await client.get("/v1/profiles")
    assert r.status_code == 400
    r = await client.post("/v1/decide", json={"identifiers": {"cookie": ""}, "channel": "web"})
    assert r.status_code == 400


async def test_oldest_anonymous_identifiers_are_dropped_beyond_the_limit(client) -> None:
    account = uid("acct")
    cookies = [uid("ck") for _ in range(10)]  # account + 10 cookies: one over the limit
    dropped: list[str] = []
    for cookie in cookies:
        r = await post(client, ev("identify", {"cookie": cookie, "account": account}))
        dropped += r.get("identity", {}).get("dropped_identifiers", [])
    assert dropped == [identifier_key("cookie", cookies[0])]
    ids = (await client.get(f"/v1/profiles/{account}")).json()["identifiers"]
    assert len(ids["cookie"]) == 9 and cookies[0] not in ids["cookie"]


async def test_batch_decide_follows_a_customer_id_that_was_merged_away(client) -> None:
    """Regression: /v1/decide/batch answered 500 for a merged-away customer id."""
    cookie, account, other = uid("ck"), uid("acct"), uid("c")
    await post(client, ev("page_view", {"cookie": cookie}), ev("page_view", customer_id=other))
    anon = new_profile_id("cookie", cookie)
    r = await post(client, ev("identify", {"cookie": cookie, "account": account}))
    assert r["identity"]["merged"] == [anon]
    r = await client.post(
        "/v1/decide/batch", json={"customer_ids": [anon, other], "channel": "web"}
    )
    assert r.status_code == 200, r.text
    answers = r.json()["decisions"]
    assert [a["customer_id"] for a in answers] == [account, other]
    assert all(not a["fallback"] for a in answers)
