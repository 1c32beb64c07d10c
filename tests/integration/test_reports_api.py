"""The report API against the real server: counts merged from both shards, auth,
bad ranges, fallbacks counted from the ingress, and a killed shard that neither
loses nor double-counts what it had counted.

The session server is shared, so every assertion is on the change between two
reads of a report (tests in this process run one at a time).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
import ray
from tests_support import auth_headers, kill_shard

from actors.shard import NAMESPACE, shard_name
from models.access import KeyStore
from models.partitioning import PartitionMap, partition_of

REPORTS = ("volumes", "experiments", "models", "health")


def web_totals(body: dict) -> dict[str | None, dict]:
    return {t["offer_id"]: t for t in body["totals"] if t["channel"] == "web"}


async def volumes(client: httpx.AsyncClient) -> dict[str | None, dict]:
    r = await client.get("/v1/reports/volumes", params={"channel": "web"})
    assert r.status_code == 200, r.text
    return web_totals(r.json())


def delta(after: dict, before: dict, field: str) -> Counter:
    out: Counter = Counter()
    for k, row in after.items():
        d = row[field] - (before.get(k, {}).get(field, 0))
        if d:
            out[k] = d
    return out


async def decide_and_respond(
    client: httpx.AsyncClient, cids: list[str], every: int = 2
) -> tuple[Counter, Counter]:
    """One web decision per customer; a 'clicked' response to every ``every``-th."""
    decided: Counter = Counter()
    clicked: Counter = Counter()
    events = []
    for i, cid in enumerate(cids):
        # A generous deadline: a fallback (busy machine) would be counted too, but later.
        body = {"customer_id": cid, "channel": "web", "deadline_ms": 5000}
        r = await client.post("/v1/decide", json=body)
        assert r.status_code == 200, r.text
        d = r.json()
        assert not d["fallback"]
        offer = d["offers"][0]["offer_id"] if d["offers"] else None
        decided[offer] += 1
        if i % every == 0:
            clicked[offer] += 1
            events.append({"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "response",
                           "decision_id": d["decision_id"],
                           "attributes": {"outcome": "clicked"}})  # fmt: skip
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text
    return decided, clicked


async def test_volumes_count_every_decision_and_response_of_both_shards(
    client: httpx.AsyncClient, server_settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, 2)
    cids = [f"rep-{uuid.uuid4().hex[:10]}" for _ in range(30)]
    assert {pmap.shard_of(c) for c in cids} == {0, 1}
    before = await volumes(client)
    decided, clicked = await decide_and_respond(client, cids)
    after = await volumes(client)
    assert delta(after, before, "decisions") == decided
    assert delta(after, before, "positives") == clicked - Counter({None: clicked[None]})
    assert sum(delta(after, before, "impressions").values()) == sum(
        n for o, n in decided.items() if o is not None
    )
    for row in after.values():
        if row["decisions"]:
            assert row["success_rate"] == round(row["positives"] / row["decisions"], 6)
    # The series holds the same counts hour by hour.
    body = (await client.get("/v1/reports/volumes", params={"channel": "web"})).json()
    assert body["bucket_s"] == 3600 and body["until"] - body["since"] == 86400
    series = Counter()
    for s in body["series"]:
        series[s["offer_id"]] += s["decisions"]
    assert series == Counter({k: v["decisions"] for k, v in after.items()})


async def test_reports_need_the_reports_scope_and_name_bad_range_fields(
    client: httpx.AsyncClient, server: str, server_settings
) -> None:
    _, decider = KeyStore(server_settings.data_dir).create("rep-decider", "decide")
    _, reader = KeyStore(server_settings.data_dir).create("rep-reader", "reports:read")
    async with httpx.AsyncClient(base_url=server, timeout=30) as anon:
        for name in REPORTS:
            assert (await anon.get(f"/v1/reports/{name}")).status_code == 401
            r = await anon.get(f"/v1/reports/{name}", headers=auth_headers(decider))
            assert r.status_code == 403
            r = await anon.get(f"/v1/reports/{name}", headers=auth_headers(reader))
            assert r.status_code == 200, r.text
    now = time.time()
    bad = [
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": now, "until": now - 10}, "until"),
        ({"since": now - 400 * 86400, "until": now}, "since"),
        ({"since": -5}, "since"),
    ]
    for name in REPORTS:
        for params, field in bad:
            r = await client.get(f"/v1/reports/{name}", params=params)
            assert r.status_code == 400, (name, params, r.text)
            assert r.json()["error"]["field"] == field, (name, params, r.text)


async def test_models_and_experiments_reports_answer_per_contract(
    client: httpx.AsyncClient,
) -> None:
    await decide_and_respond(client, [f"rep-m-{uuid.uuid4().hex[:8]}" for _ in range(10)])
    models = (await client.get("/v1/reports/models")).json()["models"]
    web = [m for m in models if m["key"].endswith("@web")]
    assert web and all(0 <= m["maturity"] <= 1 for m in web)
    assert all(m["auc_series"] and m["evidence"] > 0 for m in web)
    exps = (await client.get("/v1/reports/experiments")).json()
    assert isinstance(exps["experiments"], list)


async def test_fallbacks_decided_in_the_ingress_show_in_health(
    client: httpx.AsyncClient, server_settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, 2)
    cids = [c for c in (f"rep-fb-{uuid.uuid4().hex[:8]}" for _ in range(60))
            if pmap.shard_of(c) == 1][:5]  # fmt: skip
    before = (await client.get("/v1/reports/health")).json()
    shard = ray.get_actor(shard_name(1), namespace=NAMESPACE)
    await shard.set_slow.remote(0.3)
    try:
        for cid in cids:
            r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                      "deadline_ms": 20})  # fmt: skip
            assert r.status_code == 200 and r.json()["fallback"], r.text
    finally:
        await shard.set_slow.remote(0.0)
    deadline = time.monotonic() + 20
    while True:  # each replica sends its counts about once a second
        health = (await client.get("/v1/reports/health")).json()
        if health["fallbacks"]["total"] - before["fallbacks"]["total"] >= len(cids):
            break
        assert time.monotonic() < deadline, health["fallbacks"]
        await asyncio.sleep(0.3)
    assert health["fallbacks"]["total"] - before["fallbacks"]["total"] == len(cids)
    assert [s["name"] for s in health["shards"]] == ["shard-0", "shard-1"]
    assert all(s["alive"] and s["events_applied"] >= 0 for s in health["shards"])
    latest = health["fallbacks"]["series"][-1]
    assert latest["decisions"] >= latest["fallbacks"] >= 1


async def test_a_killed_shard_neither_loses_nor_double_counts_its_report_counters(
    client: httpx.AsyncClient, server_settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, 2)
    on0 = [c for c in (f"rep-k-{uuid.uuid4().hex[:8]}" for _ in range(80))
           if pmap.shard_of(c) == 0]  # fmt: skip
    await decide_and_respond(client, on0[:10])
    r = await client.post("/v1/admin/snapshot")  # some counts in the snapshot ...
    assert r.status_code == 200, r.text
    await decide_and_respond(client, on0[10:20], every=3)  # ... and some only in the journal
    before = await volumes(client)
    await kill_shard(0)
    r = await client.get("/v1/reports/volumes", params={"channel": "web"})
    assert r.status_code == 200, r.text
    after = web_totals(r.json())
    for field in ("decisions", "positives", "impressions", "responses"):
        assert {k: v[field] for k, v in after.items()} == {k: v[field] for k, v in before.items()}


async def move_partition(client: httpx.AsyncClient, partition: int, to: int) -> None:
    r = await client.post("/v1/admin/moves", json={"partitions": [partition], "to": to})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while True:
        progress = (await client.get("/v1/admin/rebalance")).json()
        if not progress["running"] and progress["map"]["owners"][partition] == to:
            assert progress["error"] is None, progress
            return
        assert time.monotonic() < deadline, progress
        await asyncio.sleep(0.2)


async def test_a_partition_move_keeps_every_count_and_responses_after_it_count_too(
    client: httpx.AsyncClient, server_settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, 2)
    owners = (await client.get("/v1/admin/rebalance")).json()["map"]["owners"]
    partition = next(p for p, s in enumerate(owners) if s == 0 and pmap.owners[p] == 0)
    cids = []
    for i in range(5000):
        cid = f"rep-mv-{i}-{uuid.uuid4().hex[:6]}"
        if partition_of(cid, server_settings.partitions) == partition:
            cids.append(cid)
        if len(cids) == 8:
            break
    before = await volumes(client)
    decisions = []
    for cid in cids:
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                  "deadline_ms": 5000})  # fmt: skip
        assert r.status_code == 200 and not r.json()["fallback"], r.text
        decisions.append(r.json())

    async def respond(ds: list[dict]) -> None:
        events = [{"event_id": uuid.uuid4().hex, "customer_id": d["customer_id"],
                   "type": "response", "decision_id": d["decision_id"],
                   "attributes": {"outcome": "accepted"}} for d in ds]  # fmt: skip
        r = await client.post("/v1/events", json={"events": events})
        assert r.status_code == 200, r.text

    await respond(decisions[:4])  # counted by shard 0
    try:
        await move_partition(client, partition, 1)
        await respond(decisions[4:])  # attributed on shard 1, to decisions counted on shard 0
        after = await volumes(client)
    finally:
        await move_partition(client, partition, 0)
    chosen = Counter(d["offers"][0]["offer_id"] if d["offers"] else None for d in decisions)
    assert delta(after, before, "decisions") == chosen
    positives = Counter(d["offers"][0]["offer_id"] for d in decisions if d["offers"])
    assert delta(after, before, "positives") == positives
    assert await volumes(client) == after  # moving back changes nothing either
