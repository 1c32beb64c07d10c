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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from tests_support import free_port, start_cli_server, stop_cli_server

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


class Traffic(threading.Thread):
    """Events and decides for ``customers`` until stopped; unacknowledged batches are re-sent."""

    def __init__(self, base: str, customers: list[str]) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.customers = customers
        self.sent: Counter[str] = Counter()  # acknowledged page views per customer
        self.acknowledged: list[dict] = []  # every acknowledged batch
        self.resends = 0
        self.decides = 0
        self.decide_failures: list[str] = []
        self.stop_at = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            i = 0
            while not self.stop_at.is_set():
                cid = self.customers[i % len(self.customers)]
                i += 1
                batch = [{"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}]
                for _ in range(60):  # a client's bounded retries of the same batch
                    try:
                        if c.post("/v1/events", json={"events": batch}).status_code == 200:
                            self.sent[cid] += 1
                            self.acknowledged.append(batch[0])
                            break
                    except httpx.HTTPError:
                        pass
                    self.resends += 1
                    time.sleep(0.2)
                else:
                    raise AssertionError(f"events for {cid} never acknowledged")
                r = c.post("/v1/decide", json={"customer_id": cid, "channel": "web"})
                self.decides += 1
                if r.status_code != 200:
                    self.decide_failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.01)


def get_json(c: httpx.Client, path: str, timeout_s: float = 60.0) -> dict:
    """GET that waits (boundedly) while the coordinator or a shard restarts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = c.get(path)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"GET {path} kept failing"
        time.sleep(0.3)


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
    traffic = Traffic(base, customers)
    traffic.start()
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            move_with_a_kill(c, victim, at_step)
            time.sleep(1.0)  # some traffic after the move too
    finally:
        traffic.stop_at.set()
        traffic.join(timeout=120)
    assert not traffic.is_alive()
    assert traffic.decides > 0 and not traffic.decide_failures, traffic.decide_failures[:3]
    with httpx.Client(base_url=base, timeout=30) as c:
        check(c, traffic.sent)
        # Re-sending everything is recognised: dedupe ids moved with the profiles.
        again = c.post("/v1/events", json={"events": traffic.acknowledged}).json()
        assert again["duplicates"] == len(traffic.acknowledged) and again["applied"] == 0
        check(c, traffic.sent)
