"""The partition map is kept and moved, never rebuilt: every customer stays readable.

A restart with another shard count moves partitions (live hand-offs, see
``actors/handoff.py``) instead of serving a partial view; ``shards: 0`` keeps
the stored count; scaling requests that cannot work are refused with a 4xx.
The identity map is kept and scaled the same way: every identifier still
names its customer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from tests_support import free_port, start_cli_server, stop_cli_server

from actors.coordinator import layout_conflict, rescale_to, stored_identity_map, stored_map
from models.partitioning import PartitionMap
from models.settings import load_settings

PARTITIONS = 32


def test_a_data_directory_without_a_stored_map_is_read_as_its_round_robin_layout(
    tmp_path: Path,
) -> None:
    for i in range(3):
        (tmp_path / f"shard-{i}").mkdir()
    settings = load_settings(None, {"data_dir": str(tmp_path), "partitions": 16, "shards": 2})
    assert stored_map(settings) == PartitionMap.initial(16, 3)
    assert layout_conflict(settings) is None
    assert rescale_to(settings) == 2
    auto = load_settings(None, {"data_dir": str(tmp_path), "partitions": 16, "shards": 0})
    assert rescale_to(auto) is None  # shards: 0 keeps the stored count


def test_changing_the_partition_count_is_refused(tmp_path: Path) -> None:
    stored = {"map": PartitionMap.initial(32, 2).to_dict(), "identity_shards": 2}
    (tmp_path / "coordinator.json").write_text(json.dumps(stored))
    settings = load_settings(None, {"data_dir": str(tmp_path), "partitions": 16})
    assert stored_map(settings) == PartitionMap.initial(32, 2)
    conflict = layout_conflict(settings)
    assert conflict is not None and "32 partitions" in conflict and "16" in conflict
    same = load_settings(None, {"data_dir": str(tmp_path), "partitions": 32, "shards": 0})
    assert layout_conflict(same) is None


def rtim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for_job(c: httpx.Client, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = c.get("/v1/admin/rebalance").json()
        if not p["running"]:
            assert p["error"] is None, p
            return p
        time.sleep(0.3)
    raise AssertionError(f"scaling did not finish: {p}")


def check_everyone(c: httpx.Client, views: dict[str, int], shards: int, logged_in: int = 0) -> None:
    """Every customer answers with its own count; the map is the same on every shard.

    ``logged_in``: profiles made by logins besides ``views``.
    """
    for cid, n in views.items():
        r = c.get(f"/v1/profiles/{cid}")
        assert r.status_code == 200, (cid, r.text)
        assert r.json()["counters"]["page_view"]["1h"] == n, cid
    stats = c.get("/v1/admin/shards").json()
    assert len(stats["shards"]) == shards
    assert {s["epoch"] for s in stats["shards"]} == {stats["epoch"]}
    assert sum(s["partitions"] for s in stats["shards"]) == PARTITIONS
    assert sum(s["profiles"] for s in stats["shards"]) == len(views) + logged_in
    sizes = [s["partitions"] for s in stats["shards"]]
    assert max(sizes) - min(sizes) <= 1, sizes


def check_identities(c: httpx.Client, people: dict[str, str], identity_shards: int) -> None:
    """Every cookie names its account; identity partitions spread evenly, one owner each."""
    for cookie, account in people.items():
        r = c.get("/v1/profiles", params={"cookie": cookie})
        assert r.status_code == 200, (cookie, r.text)
        assert r.json()["customer_id"] == account
    stats = c.get("/v1/admin/shards").json()["identity_shards"]
    assert len(stats) == identity_shards
    assert sum(s["identifiers"] for s in stats) == 2 * len(people)
    sizes = [s["partitions"] for s in stats]
    assert sum(sizes) == PARTITIONS and max(sizes) - min(sizes) <= 1, sizes


def test_restart_and_scaling_move_partitions_and_every_customer_stays_readable(
    tmp_path: Path,
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    base = f"http://127.0.0.1:{port}"
    views = {f"layout-{uuid.uuid4().hex[:8]}": 1 + i % 3 for i in range(40)}
    events = [{"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}
              for cid, n in views.items() for _ in range(n)]  # fmt: skip
    people = {f"ck-{uuid.uuid4().hex[:8]}": f"acct-{uuid.uuid4().hex[:8]}" for _ in range(20)}
    logins = [{"event_id": uuid.uuid4().hex, "type": "identify",
               "identifiers": {"cookie": ck, "account": acct}}
              for ck, acct in people.items()]  # fmt: skip
    proc = start_cli_server(port, data, log, shards=1, partitions=PARTITIONS)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/v1/events", json={"events": events}).json()["applied"] == len(events)
            c.post("/v1/decide/batch", json={"customer_ids": list(views), "channel": "web"})
            assert c.post("/v1/events", json={"events": logins}).status_code == 200
            check_identities(c, people, 1)
            r = c.put("/v1/admin/shards", json={"identity_shards": 2})
            assert r.status_code == 202, r.text
            assert wait_for_job(c)["identity_map"]["shards"] == 2
            check_identities(c, people, 2)
    finally:
        stop_cli_server(proc)

    # Restarted with 3 shards on the same data: partitions move, nobody is lost.
    proc = start_cli_server(port, data, log, shards=3, partitions=PARTITIONS)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            check_everyone(c, views, 3, len(people))
            check_identities(c, people, 2)  # the identity map was kept
            # Re-sent events are still recognised: dedupe ids moved with the profiles.
            again = c.post("/v1/events", json={"events": events}).json()
            assert again["duplicates"] == len(events)

            for bad, field in ((0, "shards"), (PARTITIONS + 1, "shards"), ("2", "shards")):
                r = c.put("/v1/admin/shards", json={"shards": bad})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["field"] == field
                r = c.put("/v1/admin/shards", json={"identity_shards": bad})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["field"] == "identity_shards"
            for bad_body in ({}, {"identity": 2}, [2]):
                r = c.put("/v1/admin/shards", json=bad_body)
                assert r.status_code == 400, r.text
            r = c.post("/v1/admin/moves", json={"partitions": [0], "to": 2, "identity": True})
            assert r.status_code == 404 and "identity shard" in r.json()["error"]["message"]
            r = c.post("/v1/admin/moves", json={"partitions": [PARTITIONS], "to": 0})
            assert r.status_code == 404 and "partition" in r.json()["error"]["message"]
            r = c.post("/v1/admin/moves", json={"partitions": [0], "to": 7})
            assert r.status_code == 404 and "shard" in r.json()["error"]["message"]

            r = c.put("/v1/admin/shards", json={"shards": 2})
            assert r.status_code == 202, r.text
            busy = c.put("/v1/admin/shards", json={"shards": 4})
            assert busy.status_code == 409 and busy.json()["error"]["code"] == "move_in_progress"
            busy = c.put("/v1/admin/shards", json={"identity_shards": 3})
            assert busy.status_code == 409 and "move is running" in busy.json()["error"]["message"]
            done = wait_for_job(c)
            assert done["moves_done"] == done["moves_total"] > 0
            check_everyone(c, views, 2, len(people))

            # What an operator runs: `rtim scale`, with progress until it is done.
            refused = rtim("scale", "--shards", "0", "--url", base)
            assert refused.returncode == 2 and "between 1 and" in refused.stderr
            scaled = rtim("scale", "--shards", "1", "--url", base)
            assert scaled.returncode == 0, scaled.stderr
            assert "hand-offs" in scaled.stdout and "over 1 shards" in scaled.stdout
            check_everyone(c, views, 1, len(people))
            scaled = rtim("scale", "--identity-shards", "1", "--url", base)
            assert scaled.returncode == 0, scaled.stderr
            assert "over 1 identity shards" in scaled.stdout, scaled.stdout
            check_identities(c, people, 1)
            audit = c.get("/v1/admin/audit", params={"action": "shards.scale"}).json()
            assert audit["entries"][0]["target"] == "identity_shards=1", audit
            decisions = c.get(f"/v1/profiles/{next(iter(views))}/decisions")
            assert decisions.status_code == 200 and decisions.json()

            # Shards over nodes: one node here, so nothing to spread and nowhere to drain to.
            nodes = c.get("/v1/admin/nodes").json()
            assert len(nodes["nodes"]) == 1 and nodes["nodes"][0]["shards"] == [0], nodes
            assert nodes["nodes"][0]["draining"] is False, nodes
            only = nodes["nodes"][0]["node"]
            r = c.post("/v1/admin/rebalance", json={"drain": "no-such-node"})
            assert r.status_code == 404 and r.json()["error"]["field"] == "drain", r.text
            r = c.post("/v1/admin/rebalance", json={"drain": only})
            assert r.status_code == 400 and "no node left" in r.json()["error"]["message"], r.text
            r = c.post("/v1/admin/rebalance", json={"nodes": 2})
            assert r.status_code == 400, r.text
            spread = rtim("rebalance", "--url", base)
            assert spread.returncode == 0 and "0 shards moved" in spread.stdout, spread
            check_everyone(c, views, 1, len(people))
    finally:
        stop_cli_server(proc)
    assert list(data.glob("shard-1.retired-epoch-*")) and list(data.glob("shard-2.retired-*"))

    # What a restart reads: the map after the moves, and shards: 0 keeps its count.
    auto = load_settings(None, {"data_dir": str(data), "partitions": PARTITIONS, "shards": 0})
    stored = stored_map(auto)
    assert stored is not None and stored.shards == 1 and set(stored.owners) == {0}
    assert rescale_to(auto) is None and layout_conflict(auto) is None
    ids = stored_identity_map(auto)
    assert ids is not None and ids.shards == 1 and set(ids.owners) == {0}
    assert list(data.glob("identity-1.retired-epoch-*"))
