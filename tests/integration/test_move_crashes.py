"""A partition move interrupted by a kill (old owner, new owner, coordinator) still ends right.

One server (a subprocess, its own Ray) with a pause after each hand-off
step, so each kill lands at a known step. While each move runs, a client
keeps sending events (re-sending any batch that was not acknowledged, as a
client should) and decides. Afterwards: each partition has exactly one
owner, every event counts exactly once, every profile reads back, and no
decide failed (fallbacks are allowed and counted).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from tests_support import Traffic, free_port, get_json, start_cli_server, stop_cli_server

PARTITIONS = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("move-crashes")
    port = free_port()
    extra = {"RTIM_MOVE_PAUSE_S": "1.0", "RTIM_MOVE_PARTITIONS": "4", "RTIM_INGRESS_REPLICAS": "1"}
    proc = start_cli_server(port, tmp / "data", tmp / "server.log", 2, PARTITIONS, extra_env=extra)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_cli_server(proc)


def pid_of(c: httpx.Client, victim: str, move: dict) -> int:
    if victim == "coordinator":
        return get_json(c, "/v1/admin/rebalance")["coordinator_pid"]
    shards = get_json(c, "/v1/admin/shards")["shards"]
    return shards[move[victim]]["pid"]


def move_with_a_kill(c: httpx.Client, victim: str, at_step: str) -> dict:
    """Move 4 partitions of shard 0 to shard 1 (or back), killing ``victim`` at ``at_step``."""
    owners = get_json(c, "/v1/admin/rebalance")["map"]["owners"]
    source = 0 if owners.count(0) >= owners.count(1) else 1
    parts = [p for p, s in enumerate(owners) if s == source][:4]
    r = c.post("/v1/admin/moves", json={"partitions": parts, "to": 1 - source})
    assert r.status_code == 202, r.text
    move = {"source": source, "target": 1 - source, "partitions": parts}
    deadline = time.monotonic() + 30
    while (get_json(c, "/v1/admin/rebalance").get("current") or {}).get("step") != at_step:
        assert time.monotonic() < deadline, f"move never reached {at_step}"
        time.sleep(0.1)
    killed = pid_of(c, victim, move)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        progress = get_json(c, "/v1/admin/rebalance")
        owners = progress["map"]["owners"]
        if not progress["running"] and all(owners[p] == move["target"] for p in parts):
            assert progress["error"] is None, progress
            assert pid_of(c, victim, move) != killed, "the victim was not restarted"
            return move
        assert time.monotonic() < deadline, f"move did not finish after killing {victim}"
        time.sleep(0.3)


def check(c: httpx.Client, expected: Counter[str]) -> None:
    stats = get_json(c, "/v1/admin/shards")
    shards = stats["shards"]
    assert {s["epoch"] for s in shards} == {stats["epoch"]}, "shards disagree on the map"
    assert sum(s["partitions"] for s in shards) == PARTITIONS, "a partition has 0 or 2 owners"
    assert all(not s["outbox"] for s in shards), "a finished hand-off was not acknowledged"
    for cid, n in expected.items():
        r = c.get(f"/v1/profiles/{cid}")
        assert r.status_code == 200, (cid, r.text)
        assert r.json()["counters"]["page_view"]["1h"] == n, cid


@pytest.mark.parametrize(
    ("victim", "at_step"),
    [("source", "handed_off"), ("target", "taken_over"), ("coordinator", "handed_off")],
)
def test_a_move_interrupted_by_a_kill_ends_with_one_owner_and_every_event_once(
    base: str, victim: str, at_step: str
) -> None:
    customers = [f"crash-{victim}-{uuid.uuid4().hex[:6]}" for _ in range(40)]
    traffic = Traffic(base, customers, retries=60)
    traffic.start()
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            move_with_a_kill(c, victim, at_step)
            time.sleep(1.0)  # some traffic after the move too
    finally:
        traffic.stop()
    assert not traffic.lost, f"events never acknowledged for {traffic.lost[:3]}"
    assert traffic.decides > 0 and not traffic.decide_failures, traffic.decide_failures[:3]
    with httpx.Client(base_url=base, timeout=30) as c:
        check(c, traffic.sent)
        # Re-sending everything is recognised: dedupe ids moved with the profiles.
        again = c.post("/v1/events", json={"events": traffic.acknowledged}).json()
        assert again["duplicates"] == len(traffic.acknowledged) and again["applied"] == 0
        check(c, traffic.sent)


def test_a_restarted_coordinator_asked_to_move_first_runs_one_job_not_two(base: str) -> None:
    # The multi-node scenario's lost acknowledgements: a coordinator restarted
    # (its node was lost) got a move request before any topology request; the
    # first topology request then resumed "the half-done move" as a second job
    # beside the running one. The two overwrote each other's plan and map, and
    # shards ended at an epoch the coordinator never gave out: their customers'
    # events were refused (stale map) for good.
    customers = [f"restart-{uuid.uuid4().hex[:6]}" for _ in range(40)]
    traffic = Traffic(base, customers, retries=60)
    traffic.start()
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            progress = get_json(c, "/v1/admin/rebalance")
            owners = progress["map"]["owners"]
            source = 0 if owners.count(0) >= owners.count(1) else 1
            parts = [p for p, s in enumerate(owners) if s == source][:8]  # two hand-offs of 4
            os.kill(progress["coordinator_pid"], signal.SIGKILL)
            deadline = time.monotonic() + 120
            while True:  # the first call the restarted coordinator answers
                r = c.post("/v1/admin/moves", json={"partitions": parts, "to": 1 - source})
                if r.status_code == 202:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                time.sleep(0.5)
            while True:
                progress = get_json(c, "/v1/admin/rebalance")
                if not progress["running"]:
                    break
                assert time.monotonic() < deadline, "the move did not finish"
                time.sleep(0.3)
            assert progress["error"] is None, progress
            assert progress["moves_done"] == progress["moves_total"] == 2, progress
            assert all(progress["map"]["owners"][p] == 1 - source for p in parts), progress
            time.sleep(1.0)
    finally:
        traffic.stop()
    assert not traffic.lost, (traffic.lost[:3], traffic.event_failures[-3:])
    with httpx.Client(base_url=base, timeout=30) as c:
        check(c, traffic.sent)
