"""Adaptive models over HTTP: learning from responses on every shard, merged, visible.

The session server's catalogue is swapped for a small learning catalogue and
restored in ``finally`` (other tests expect the demo catalogue).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import ray
from tests_support import auth_headers, on_other_shards, replica_urls

from actors.shard import NAMESPACE, shard_name
from models.partitioning import PartitionMap
from models.settings import Settings

SEGMENTS = ("young", "senior")
OFFERS = ("card", "pension")


def learning_catalog() -> dict:
    return {
        "version": f"learning-{uuid.uuid4().hex[:6]}",
        "channels": {"web": {"kind": "inbound", "cost": 0.0}},
        "offers": [
            {
                "id": o,
                "name": o,
                "group": o,
                "value": 10,
                "propensity": 0.1,
                "treatments": [{"id": f"{o}_web", "channel": "web"}],
            }
            for o in OFFERS
        ],
        "learning": {"offers": "all", "predictors": ["attr.segment"], "prior_weight": 10},
    }


async def post_events(client: httpx.AsyncClient, events: list[dict]) -> None:
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text


@pytest.fixture
async def learning_catalogue(client: httpx.AsyncClient):
    """The learning catalogue for one test; the demo catalogue back on every replica after."""
    original = (await client.get("/v1/catalog")).json()
    r = await client.put("/v1/admin/catalog", json=learning_catalog())
    assert r.status_code == 200, r.text
    try:
        yield
    finally:
        r = await client.put("/v1/admin/catalog", json=original)
        assert r.status_code == 200, r.text
        await refresh_every_replica()


async def test_models_learn_on_every_shard_merge_and_show(
    learning_catalogue, client: httpx.AsyncClient, server_settings: Settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, 2)
    cids = [f"learner-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    assert len({pmap.shard_of(c) for c in cids}) == 2  # both shards see responses
    await post_events(client, [
        {"event_id": uuid.uuid4().hex, "customer_id": c, "type": "profile_update",
         "attributes": {"segment": SEGMENTS[i % 2]}}
        for i, c in enumerate(cids)
    ])  # fmt: skip
    responses, positives = [], 0
    for i, c in enumerate(cids):
        body = {"customer_id": c, "channel": "web", "deadline_ms": 5000}
        d = (await client.post("/v1/decide", json=body)).json()
        assert not d["fallback"]
        offer = d["offers"][0]
        assert d["decision_id"] and 0 < offer["probability"] <= 1
        # The young take the card, seniors the pension.
        good = (offer["offer_id"] == "card") == (SEGMENTS[i % 2] == "young")
        positives += good
        outcome = "accepted" if good else "rejected"
        responses.append(
            {"event_id": uuid.uuid4().hex, "customer_id": c, "type": "response",
             "decision_id": d["decision_id"], "attributes": {"outcome": outcome}}
        )  # fmt: skip
    await post_events(client, responses)
    await post_events(client, responses[:5])  # duplicates learn nothing

    body = (await client.get("/v1/models/adaptive")).json()
    assert {m["model"] for m in body["models"]} == {"card@web", "pension@web"}
    assert sum(m["responses"] for m in body["models"]) == len(cids)
    assert sum(m["positives"] for m in body["models"]) == positives
    assert body["responses"]["learned"] == len(cids)
    one = (await client.get("/v1/models/adaptive/card@web")).json()
    assert one["responses"] > 0 and 0 < one["maturity"] < 1

    # Every shard decides with what both learned, within the merge interval.
    shards = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(2)]
    deadline = time.time() + 15
    while True:
        views = await asyncio.gather(*(s.adaptive_models.remote() for s in shards))
        totals = [sum(m["responses"] for m in v["models"]) for v in views]
        if totals == [len(cids)] * 2 or time.time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert totals == [len(cids)] * 2

    r = await client.post("/v1/models/adaptive/card@web/freeze", json={"frozen": "yes"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "frozen"
    r = await client.post("/v1/models/adaptive/card@web/reset")
    assert r.status_code == 200
    after = (await client.get("/v1/models/adaptive/card@web")).json()
    assert after["responses"] == 0
    assert (await client.get("/v1/models/adaptive/nope@web")).status_code == 404

    explain = await client.post(
        "/v1/decide",
        json={"customer_id": cids[1], "channel": "web", "explain": True, "deadline_ms": 5000},
    )
    rows = [t for t in explain.json()["trace"] if t["stage"] == "arbitration"]
    assert all({"prior", "learned", "sampled"} <= set(t) for t in rows)


async def refresh_every_replica() -> None:
    """Each ingress replica validates with its own copy of the catalogue and refreshes it
    when a decision comes back with another version: decide once on each (on ``web``,
    which both catalogues have), so no replica keeps validating against ours."""
    for url in replica_urls(expect=2):
        async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=auth_headers()) as c:
            body = {"customer_id": "catalogue-refresh", "channel": "web", "deadline_ms": 5000}
            r = await c.post("/v1/decide", json=body)
            assert r.status_code == 200, r.text


async def test_catalogue_naming_an_unknown_predictor_is_refused(client: httpx.AsyncClient) -> None:
    doc = learning_catalog()
    doc["offers"][1]["adaptive"] = {"predictors": ["attr.segment", "weather.today"]}
    r = await client.put("/v1/admin/catalog", json=doc)
    assert r.status_code == 422
    err = r.json()["error"]
    assert "pension" in err["field"] and "weather.today" in err["message"]


async def test_response_with_an_unknown_outcome_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"events": [
        {"event_id": uuid.uuid4().hex, "customer_id": "x", "type": "response",
         "attributes": {"outcome": "loved_it"}}
    ]})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["field"].endswith("outcome")


async def test_responses_after_a_merge_still_teach_the_model(
    learning_catalogue, client: httpx.AsyncClient, server_settings: Settings
) -> None:
    """Decided for an anonymous visitor, answered after login (another shard): learned once."""
    decided = []
    pairs = [on_other_shards(server_settings) for _ in range(3)]
    for cookie, account in pairs:
        body = {"identifiers": {"cookie": cookie}, "channel": "web", "deadline_ms": 5000}
        d = (await client.post("/v1/decide", json=body)).json()
        assert not d["fallback"] and d["offers"], d
        decided.append(d["decision_id"])
        await post_events(client, [
            {"event_id": uuid.uuid4().hex, "customer_id": account, "type": "profile_update",
             "attributes": {"segment": "young"}},
            {"event_id": uuid.uuid4().hex, "type": "identify",
             "identifiers": {"cookie": cookie, "account": account}},
        ])  # fmt: skip
    before = (await client.get("/v1/models/adaptive")).json()["responses"]
    # One answers under the account, one under the cookie, one twice (a retry).
    (_, a0), (c1, _), (_, a2) = pairs
    responses = [
        {"event_id": f"r-{decided[0]}", "customer_id": a0, "type": "response",
         "decision_id": decided[0], "attributes": {"outcome": "accepted"}},
        {"event_id": f"r-{decided[1]}", "identifiers": {"cookie": c1}, "type": "response",
         "decision_id": decided[1], "attributes": {"outcome": "rejected"}},
        {"event_id": f"r-{decided[2]}", "customer_id": a2, "type": "response",
         "decision_id": decided[2], "attributes": {"outcome": "clicked"}},
    ]  # fmt: skip
    await post_events(client, responses)
    await post_events(client, responses[2:])
    after = (await client.get("/v1/models/adaptive")).json()["responses"]
    assert after["learned"] - before["learned"] == 3, (before, after)
    assert after["unknown_decision"] == before["unknown_decision"]
    entry = (await client.get(f"/v1/decisions/{decided[0]}")).json()
    assert entry["customer_id"] == a0
    assert [o["outcome"] for o in entry["outcomes"]] == ["accepted"]
