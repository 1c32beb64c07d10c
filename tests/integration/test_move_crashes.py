"""A partition move interrupted by a kill (old owner, new owner, coordinator) still ends right.

One server (a subprocess, its own Ray) with a pause after each hand-off
step, so each kill lands at a known step. While each move runs, a client
keeps sending events (re-sending any batch that was not acknowledged, as a
client should) and decides. Afterwards: each partition has exactly one
owner, every event counts exactly once, every profile reads back, and no
decide failed (fallbacks are allowed and counted).

Identity partitions move between identity shards the same way; there the
client logs people in (anonymous cookie, then cookie + account) while the
cookies' partitions move, and afterwards every cookie names its own
account, whose profile holds exactly that person's page views, and every
identifier link is held once.
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
from tests_support import Traffic, free_port, get_json, start_cli_server, stop_cli_server

from models.partitioning import partition_of

PARTITIONS = 32
# Who is killed at which step of a move: the old owner, the new owner, the coordinator.
KILLS = [("source", "handed_off"), ("target", "taken_over"), ("coordinator", "handed_off")]
IDENTITY_KILLS = [*KILLS[:2], ("coordinator", "others_adopted")]  # earlier in the move


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
    shards = get_json(c, "/v1/admin/shards")["identity_shards" if move["identity"] else "shards"]
    return shards[move[victim]]["pid"]


def next_move(c: httpx.Client, identity: bool = False) -> dict:
    """4 partitions of the fuller shard (0 or 1) of a group, to the other one."""
    owners = get_json(c, "/v1/admin/rebalance")["identity_map" if identity else "map"]["owners"]
    source = 0 if owners.count(0) >= owners.count(1) else 1
    parts = [p for p, s in enumerate(owners) if s == source][:4]
    return {"source": source, "target": 1 - source, "partitions": parts, "identity": identity}


def move_with_a_kill(c: httpx.Client, victim: str, at_step: str, move: dict | None = None) -> dict:
    """Make ``move`` (default: 4 profile partitions of shard 0 to shard 1, or back),
    killing ``victim`` at ``at_step``."""
    move = move or next_move(c)
    parts = move["partitions"]
    body = {"partitions": parts, "to": move["target"], "identity": move["identity"]}
    r = c.post("/v1/admin/moves", json=body)
    assert r.status_code == 202, r.text
    group_map = "identity_map" if move["identity"] else "map"
    deadline = time.monotonic() + 30
    while (get_json(c, "/v1/admin/rebalance").get("current") or {}).get("step") != at_step:
        assert time.monotonic() < deadline, f"move never reached {at_step}"
        time.sleep(0.1)
    killed = pid_of(c, victim, move)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        progress = get_json(c, "/v1/admin/rebalance")
        owners = progress[group_map]["owners"]
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
    ids, identity_map = stats["identity_shards"], get_json(c, "/v1/admin/rebalance")["identity_map"]
    assert {s["epoch"] for s in ids} == {identity_map["epoch"]}, "identity shards disagree"
    assert sum(s["partitions"] for s in ids) == PARTITIONS, "an identity partition has 0 or 2"
    assert all(not s["outbox"] for s in ids), "a finished identity hand-off was not acknowledged"
    for cid, n in expected.items():
        r = c.get(f"/v1/profiles/{cid}")
        assert r.status_code == 200, (cid, r.text)
        assert r.json()["counters"]["page_view"]["1h"] == n, cid


@pytest.mark.parametrize(("victim", "at_step"), KILLS)
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


# -- identity partitions -------------------------------------------------------------------


class Logins:
    """Client threads logging new people in, one after another, until :meth:`stop`:
    a page view with the person's cookie, the login (cookie + account), a page
    view with the cookie. New people keep the identity shards busy (known
    cookies are answered from the ingress's identifier cache).

    Every request is re-sent until it is answered 200 (at most 60 times), as
    a client should; ``views`` counts each person's acknowledged page views,
    ``lost`` the requests never acknowledged, ``people`` those started.
    """

    def __init__(self, base: str, pool: list[tuple[str, str]], threads: int = 3) -> None:
        self.base = base
        self.people: list[tuple[str, str]] = []
        self.views: Counter[str] = Counter()  # account -> acknowledged page views
        self.lost: list[str] = []
        self.resends = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(pool[i::threads],),
                                          daemon=True) for i in range(threads)]  # fmt: skip

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
            assert not t.is_alive(), "a login thread did not stop"

    def _send(self, c: httpx.Client, event: dict) -> bool:
        for _ in range(60):
            try:
                if c.post("/v1/events", json={"events": [event]}).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            self.resends += 1
            time.sleep(0.2)
        self.lost.append(event["event_id"])
        return False

    def _run(self, pool: list[tuple[str, str]]) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            for cookie, account in pool:
                if self._stop.is_set():
                    return
                self.people.append((cookie, account))
                steps = [("page_view", {"cookie": cookie}),
                         ("identify", {"cookie": cookie, "account": account}),
                         ("page_view", {"cookie": cookie})]  # fmt: skip
                for etype, ids in steps:
                    event = {"event_id": uuid.uuid4().hex, "type": etype, "identifiers": ids}
                    if self._send(c, event) and etype == "page_view":
                        self.views[account] += 1
            raise AssertionError("the pool of people ran out")


def people_in(partitions: list[int], n: int) -> list[tuple[str, str]]:
    """``n`` new (cookie, account) pairs whose cookies live in ``partitions``."""
    out = []
    for _ in range(100 * n):
        cookie = f"ck-{uuid.uuid4().hex[:10]}"
        if partition_of(f"cookie:{cookie}", PARTITIONS) in partitions:
            out.append((cookie, f"acct-{uuid.uuid4().hex[:10]}"))
            if len(out) == n:
                return out
    raise AssertionError("no cookie hashed to the moving partitions")


def identifiers_held(c: httpx.Client) -> int:
    return sum(s["identifiers"] for s in get_json(c, "/v1/admin/shards")["identity_shards"])


def check_people(c: httpx.Client, logins: Logins, held_before: int) -> None:
    """Each cookie names its own account, holding exactly its page views; links once.

    A login whose repointing met the move finishes it on the shard's timer
    (``merge_pending``): its links are waited for, boundedly.
    """
    deadline = time.monotonic() + 20
    for cookie, account in logins.people:
        for query in ({"cookie": cookie}, {"account": account}):
            while True:
                r = c.get("/v1/profiles", params=query)
                assert r.status_code == 200, (query, r.text)
                found = r.json()
                assert found["customer_id"] == account, (query, found["customer_id"])
                assert found["counters"]["page_view"]["1h"] == logins.views[account], query
                ids = found["identifiers"]
                if ids == {"cookie": [cookie], "account": [account]}:
                    break
                assert ids == {"account": [account]} and time.monotonic() < deadline, found
                time.sleep(0.2)  # the cookie is still with the merged-away profile
    assert identifiers_held(c) - held_before == 2 * len(logins.people), "a link lost or doubled"


@pytest.mark.parametrize(("victim", "at_step"), IDENTITY_KILLS)
def test_an_identity_move_with_logins_racing_it_and_a_kill_keeps_every_person_whole(
    base: str, victim: str, at_step: str
) -> None:
    with httpx.Client(base_url=base, timeout=30) as c:
        move = next_move(c, identity=True)
        held_before = identifiers_held(c)
        rerouted_before = get_json(c, "/v1/admin/ingress")["identity_map_reroutes"]
        logins = Logins(base, people_in(move["partitions"], 600))
        logins.start()
        try:
            time.sleep(0.5)  # some people are anonymous still, some logged in, when it starts
            move_with_a_kill(c, victim, at_step, move)
            time.sleep(1.0)  # logins and page views after the move too
        finally:
            logins.stop()
        assert not logins.lost, f"requests never acknowledged: {logins.lost[:3]}"
        assert sum(logins.views.values()) > 0
        # The logins met the move: identity calls were refused (stale map) and re-routed.
        assert get_json(c, "/v1/admin/ingress")["identity_map_reroutes"] > rerouted_before
        check(c, Counter())
        check_people(c, logins, held_before)
