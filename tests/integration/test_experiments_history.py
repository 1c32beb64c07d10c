"""Experiments, the interaction history and its export against the real server.

One catalogue with an experiment (web and app) and the default control group
(email) is active for this module; the demo catalogue is put back at the end.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from tests_support import auth_headers, kill_shard

from actors.shard import NAMESPACE, shard_name
from models.decisioning.experiments import Experiments, load_experiments
from models.partitioning import PartitionMap
from models.settings import DEMO_DIR
from serving.bulk.export import EXIT_OK
from serving.bulk.history_export import HistoryExportOptions, run_history_export

VERSION = "demo-bank-experiments-1"
EXPERIMENT = {
    "name": "nba_test",
    "channels": ["web", "app"],
    "control": "holdout",
    "arms": [
        {"name": "nba", "policy": "full", "share": 0.4},
        {"name": "holdout", "policy": "no_message", "share": 0.3},
        {"name": "explore", "policy": "random", "share": 0.3},
    ],
}


def demo() -> dict:
    return yaml.safe_load((DEMO_DIR / "catalog.yaml").read_text())


def with_experiments(version: str = VERSION, **changes: object) -> dict:
    cat = demo()
    cat["version"] = version
    cat["experiments"] = [json.loads(json.dumps(EXPERIMENT))]
    cat["control_group"] = {"share": 0.2, "channels": ["email"]}
    cat.update(changes)
    return cat


async def put_catalog(c: httpx.AsyncClient, catalog: dict) -> httpx.Response:
    return await c.put(
        "/v1/admin/catalog",
        content=yaml.safe_dump(catalog),
        headers={"content-type": "application/yaml"},
    )


@pytest.fixture(scope="module")
async def experiments(server: str):
    async with httpx.AsyncClient(base_url=server, timeout=30, headers=auth_headers()) as c:
        r = await put_catalog(c, with_experiments())
        assert r.status_code == 200, r.text
        try:
            yield
        finally:
            # Back to the demo catalogue, as other tests expect it.
            assert (await put_catalog(c, demo())).status_code == 200


def arms_of(customers: list[str]) -> dict[str, str]:
    exps = load_experiments({"experiments": [EXPERIMENT]}, {"web": 0, "app": 0})
    assert isinstance(exps, Experiments)
    return {cid: exps.assign(cid, "web").arm for cid in customers}


async def export(server: str, out: Path, since: float, fmt: str = "jsonl") -> list[dict]:
    options = HistoryExportOptions(server, out, since, time.time() + 1, fmt, page_size=7,
                                   quiet=True)  # fmt: skip
    code, summary = await asyncio.to_thread(run_history_export, options)
    assert code == EXIT_OK, summary
    assert not list(out.parent.glob("*.partial"))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    return [json.loads(line) for line in out.read_text().splitlines()]


async def test_bad_experiments_are_refused_with_422_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    bad_share = with_experiments("bad-1")
    bad_share["experiments"][0]["arms"][0]["share"] = 0.5
    r = await put_catalog(client, bad_share)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "experiments[nba_test].arms"
    assert "add up to 1.1" in r.json()["error"]["message"]
    bad_arm = with_experiments("bad-2")
    bad_arm["experiments"][0]["control"] = "nobody"
    r = await put_catalog(client, bad_arm)
    assert r.status_code == 422 and r.json()["error"]["field"] == "experiments[nba_test].control"
    assert "nobody" in r.json()["error"]["message"]
    bad_policy = with_experiments("bad-3")
    bad_policy["experiments"][0]["arms"][2]["policy"] = "guess"
    r = await put_catalog(client, bad_policy)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "experiments[nba_test].arms[explore].policy"


async def test_each_customer_gets_their_arm_on_every_channel_and_replica(
    experiments, client: httpx.AsyncClient
) -> None:
    customers = [f"arm-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)]
    expected = arms_of(customers)
    assert set(expected.values()) == {"nba", "holdout", "explore"}
    web = await client.post("/v1/decide/batch", json={"customer_ids": customers,
                                                      "channel": "web"})  # fmt: skip
    assert web.status_code == 200, web.text
    for cid, d in zip(customers, web.json()["decisions"]):
        assert (d["experiment"], d["arm"]) == ("nba_test", expected[cid])
        if expected[cid] == "holdout":
            assert d["offers"] == [] and d["probability"] == 1.0
        if expected[cid] == "explore" and d["offers"]:
            assert 0 < d["offers"][0]["probability"] <= 1.0
    for cid in customers[:10]:  # single decides, other channel of the experiment
        # A generous deadline: a fallback from a replica whose catalogue is a
        # second old would name no experiment yet.
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "app",
                                                  "deadline_ms": 5000})  # fmt: skip
        assert r.status_code == 200 and r.json()["arm"] == expected[cid]
        entry = await client.get(f"/v1/decisions/{r.json()['decision_id']}")
        policy = {"nba": "full", "holdout": "no_message", "explore": "random"}[expected[cid]]
        assert entry.json()["arm"] == expected[cid] and entry.json()["policy"] == policy
    email = await client.post("/v1/decide/batch", json={"customer_ids": customers,
                                                        "channel": "email"})  # fmt: skip
    held = [d for d in email.json()["decisions"] if d["arm"] == "control"]
    assert all(d["experiment"] == "control" and d["offers"] == [] for d in held)
    assert 0 < len(held) < len(customers)
    # The demo catalogue has no experiments: other channels' answers name none.
    r = await client.post("/v1/decide", json={"customer_id": customers[0], "channel": "sms",
                                              "deadline_ms": 5000})  # fmt: skip
    assert r.json()["experiment"] is None


async def test_history_export_joins_outcomes_to_decisions_in_jsonl_and_parquet(
    experiments, server: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    since = time.time() - 1
    nba = [c for c, arm in arms_of([f"hist-{uuid.uuid4().hex[:8]}-{i}" for i in range(30)]).items()
           if arm == "nba"][:4]  # fmt: skip
    decided = {}
    for cid in nba:
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                  "context": {"device": "mobile"},
                                                  "deadline_ms": 5000})  # fmt: skip
        assert r.status_code == 200 and not r.json()["fallback"], r.text
        decided[cid] = r.json()
    holder = next(c for c in nba if decided[c]["offers"])
    d = decided[holder]
    r = await client.post("/v1/events", json={"events": [
        {"event_id": uuid.uuid4().hex, "customer_id": holder, "type": "response",
         "decision_id": d["decision_id"], "attributes": {"outcome": "accepted"}}]})  # fmt: skip
    assert r.status_code == 200, r.text
    rows = await export(server, tmp_path / "history.jsonl", since)
    by_id = {row["decision_id"]: row for row in rows}
    assert {v["decision_id"] for v in decided.values()} <= set(by_id)
    row = by_id[d["decision_id"]]
    assert row["customer_id"] == holder and row["arm"] == "nba" and row["policy"] == "full"
    assert row["chosen"][0]["offer_id"] == d["offers"][0]["offer_id"]
    assert row["candidates"] and {"propensity", "priority", "value", "cost"} <= set(
        row["candidates"][0]
    )
    assert row["context"]["request"]["context"] == {"device": "mobile"}
    assert row["outcomes"] == [{"offer_id": d["offers"][0]["offer_id"], "outcome": "accepted",
                                "ts": row["outcomes"][0]["ts"], "positive": True,
                                "value": d["offers"][0]["value"]}]  # fmt: skip
    assert all(by_id[v["decision_id"]]["outcomes"] == [] for c, v in decided.items()
               if c != holder)  # fmt: skip
    log = io.StringIO()  # the progress line: rows, rows/s, percent, ETA
    options = HistoryExportOptions(server, tmp_path / "p.jsonl", since, time.time() + 1)
    code, summary = await asyncio.to_thread(run_history_export, options, log)
    assert code == EXIT_OK and summary["rows"] >= len(decided)
    assert "rows/s" in log.getvalue() and "ETA" in log.getvalue()
    table = await export(server, tmp_path / "history.parquet", since, "parquet")
    prow = next(r for r in table if r["decision_id"] == d["decision_id"])
    assert prow["outcomes"][0]["outcome"] == "accepted" and prow["arm"] == "nba"
    assert json.loads(prow["context"])["request"]["channels"] == ["web"]


def customers_on(shard: int, settings, n: int, prefix: str) -> list[str]:
    pmap = PartitionMap.initial(settings.partitions, 2)
    out = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i}" for i in range(n * 6)]
    return [c for c in out if pmap.shard_of(c) == shard][:n]


async def test_a_shard_killed_right_after_answering_loses_no_history_row(
    experiments, server: str, server_settings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    since = time.time() - 1
    victims = customers_on(0, server_settings, 12, "killed")
    r = await client.post("/v1/decide/batch", json={"customer_ids": victims, "channel": "email"})
    assert r.status_code == 200
    ids = {d["decision_id"] for d in r.json()["decisions"]}
    assert not any(d["fallback"] for d in r.json()["decisions"])
    await kill_shard(0)
    deadline = time.monotonic() + 60
    while True:  # the restarted shard answers again
        # A generous deadline: right after the restart the replica's round-trip estimate
        # for the shard is high, and a 50 ms decide would be shed to the fallback.
        body = {"customer_id": victims[0], "channel": "sms", "deadline_ms": 5000}
        r = await client.post("/v1/decide", json=body)
        if r.status_code == 200 and not r.json()["fallback"]:
            break
        assert time.monotonic() < deadline, "shard 0 did not come back"
        await asyncio.sleep(0.5)
    rows = await export(server, tmp_path / "after-kill.jsonl", since)
    mine = [row["decision_id"] for row in rows if row["decision_id"] in ids]
    assert sorted(mine) == sorted(ids)  # every acknowledged decision, exactly once


async def test_deadline_fallbacks_reach_the_owning_shards_history(
    experiments, server: str, server_settings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    since = time.time() - 1
    cid = customers_on(1, server_settings, 1, "fallback")[0]
    shard = ray.get_actor(shard_name(1), namespace=NAMESPACE)
    await shard.set_slow.remote(0.3)
    try:
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                  "deadline_ms": 20})  # fmt: skip
    finally:
        await shard.set_slow.remote(0.0)
    assert r.json()["fallback"] is True and r.json()["arm"] == arms_of([cid])[cid]
    deadline = time.monotonic() + 20
    while True:
        rows = await export(server, tmp_path / "fallbacks.jsonl", since)
        row = next((x for x in rows if x["decision_id"] == r.json()["decision_id"]), None)
        if row is not None:
            break
        assert time.monotonic() < deadline, "the fallback never reached the history"
        await asyncio.sleep(0.5)
    assert row["fallback"] is True and row["customer_id"] == cid


async def test_erasure_removes_the_customer_from_every_history_file(
    experiments, server_settings, client: httpx.AsyncClient
) -> None:
    cid = f"erase-history-{uuid.uuid4().hex}"
    for channel in ("web", "email", "app"):
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": channel,
                                                  "deadline_ms": 5000})  # fmt: skip
        assert r.status_code == 200
    d = r.json()
    await client.post("/v1/events", json={"events": [
        {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "response",
         "decision_id": d["decision_id"], "attributes": {"outcome": "rejected"}}]})  # fmt: skip
    history = [p for p in Path(server_settings.data_dir).rglob("history-*") if p.is_file()]
    assert any(cid.encode() in p.read_bytes() for p in history)
    assert (await client.delete(f"/v1/profiles/{cid}")).status_code == 200
    assert (await client.post("/v1/admin/snapshot")).status_code == 200
    needle = cid.encode()
    left = []
    for p in Path(server_settings.data_dir).rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
            if needle in data:
                left.append(p)
    assert not left


def test_export_times_read_seconds_iso_and_durations_ago() -> None:
    from serving.bulk.commands import instant

    assert instant("now", 1000.0) == 1000.0
    assert instant("1764000000", 0.0) == 1764000000.0
    assert instant("24h", 100_000.0) == 100_000.0 - 86400
    assert instant("2026-11-25T00:00:00Z", 0.0) == 1795564800.0
    with pytest.raises(ValueError):
        instant("yesterday-ish", 0.0)


async def test_the_experiments_report_counts_each_arm_and_the_lift_against_control(
    experiments, client: httpx.AsyncClient
) -> None:
    """Decisions made under the experiment's arms, answered, show per arm in the report."""

    async def arms_report() -> dict[str, dict]:
        r = await client.get("/v1/reports/experiments")
        assert r.status_code == 200, r.text
        found = {e["name"]: e for e in r.json()["experiments"]}
        assert {"nba_test", "control"} <= set(found), found.keys()
        return {a["arm"]: a for a in found["nba_test"]["arms"]}

    before = await arms_report()
    customers = [f"rep-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
    expected = arms_of(customers)
    r = await client.post("/v1/decide/batch", json={"customer_ids": customers, "channel": "web"})
    assert r.status_code == 200, r.text
    decided, positive = {}, {}
    events = []
    for i, d in enumerate(r.json()["decisions"]):
        assert d["arm"] == expected[d["customer_id"]]
        decided[d["arm"]] = decided.get(d["arm"], 0) + 1
        if i % 2 == 0:  # every other customer answers (or buys anyway, when held out)
            positive[d["arm"]] = positive.get(d["arm"], 0) + 1
            events.append({"event_id": uuid.uuid4().hex, "customer_id": d["customer_id"],
                           "type": "response", "decision_id": d["decision_id"],
                           "attributes": {"outcome": "accepted"}})  # fmt: skip
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text
    after = await arms_report()
    for arm, n in decided.items():
        assert after[arm]["decisions"] - before.get(arm, {}).get("decisions", 0) == n, arm
        got = after[arm]["positives"] - before.get(arm, {}).get("positives", 0)
        assert got == positive.get(arm, 0), (arm, after[arm], before.get(arm))
    assert after["holdout"]["lift"] is None  # the control arm
    lifted = after["nba"]["lift"]
    assert lifted is not None and lifted["success_rate"] is not None
    assert lifted["success_rate"]["ci_low"] <= lifted["success_rate"]["estimate"]
