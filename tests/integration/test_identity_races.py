"""Identity under races, shard kills and two ingress replicas with their own caches.

Each test reproduces a sequence that once attributed one person's data to
another (issue: identity races), against real shards and both real ingress
replicas addressed one by one.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict

import httpx
import pytest
import ray
from tests_support import auth_headers, replica_urls

from actors.shard import NAMESPACE, shard_name
from models.identity.config import new_profile_id
from models.partitioning import PartitionMap


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ev(etype: str, identifiers: dict | None = None, **kw) -> dict:
    out: dict = {"event_id": uuid.uuid4().hex, "type": etype, **kw}
    if identifiers:
        out["identifiers"] = identifiers
    return out


@pytest.fixture(scope="module")
async def replicas(server: str):
    urls = replica_urls(expect=2)
    assert len(urls) == 2, urls
    clients = [httpx.AsyncClient(base_url=u, timeout=30.0, headers=auth_headers()) for u in urls]
    yield clients
    for c in clients:
        await c.aclose()


async def send(c: httpx.AsyncClient, *events: dict) -> httpx.Response:
    return await c.post("/v1/events", json={"events": list(events)})


async def ok(c: httpx.AsyncClient, *events: dict) -> dict:
    r = await send(c, *events)
    assert r.status_code == 200, r.text
    return r.json()


async def page_views(c: httpx.AsyncClient, cid: str) -> int | None:
    r = await c.get(f"/v1/profiles/{cid}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()["counters"].get("page_view", {}).get("1h", 0)


@pytest.mark.parametrize("spread", ["one replica", "two replicas"])
async def test_two_accounts_racing_for_a_seen_cookie_one_wins_and_one_gets_409(
    replicas, spread: str
) -> None:
    for _ in range(6):
        cookie, x, y = uid("ck"), uid("acct-x"), uid("acct-y")
        a, b = (replicas[0], replicas[0]) if spread == "one replica" else replicas
        await ok(a, ev("page_view", {"cookie": cookie}))
        rx, ry = await asyncio.gather(
            send(a, ev("identify", {"cookie": cookie, "account": x})),
            send(b, ev("identify", {"cookie": cookie, "account": y})),
        )
        assert sorted([rx.status_code, ry.status_code]) == [200, 409], (rx.text, ry.text)
        winner, loser = (x, y) if rx.status_code == 200 else (y, x)
        lost = ry if rx.status_code == 200 else rx
        assert lost.json()["error"]["field"] == "events[0].identifiers.account"
        for i in range(3):
            await ok(replicas[i % 2], ev("page_view", {"cookie": cookie}))
        for c in replicas:
            found = (await c.get("/v1/profiles", params={"cookie": cookie})).json()
            assert found["customer_id"] == winner
        assert await page_views(replicas[0], winner) == 4  # the anonymous one + three
        assert await page_views(replicas[1], loser) is None  # nothing of the loser applied


async def test_shard_killed_during_a_merge_keeps_the_cookie_with_its_account(
    replicas, server_settings
) -> None:
    pmap = PartitionMap.initial(server_settings.partitions, server_settings.shards)
    for _ in range(3):
        cookie = uid("ck")
        anon = new_profile_id("cookie", cookie)
        a = next(c for c in (uid("acct-a") for _ in range(100))
                 if pmap.shard_of(c) != pmap.shard_of(anon))  # fmt: skip
        b = uid("acct-b")
        c0, c1 = replicas
        await ok(c0, ev("page_view", {"cookie": cookie}))
        await ok(c0, ev("page_view", customer_id=a))
        ray.kill(ray.get_actor(shard_name(pmap.shard_of(a)), namespace=NAMESPACE), no_restart=False)
        r = await send(c0, ev("identify", {"cookie": cookie, "account": a}))
        # The hand-over is decided and journalled even while the survivor's
        # shard restarts: never a 503 after something was applied.
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:  # nothing applied: the cookie is still anonymous
            found = (await c1.get("/v1/profiles", params={"cookie": cookie})).json()
            assert found["customer_id"] == anon
        await ok(c1, ev("page_view", {"cookie": cookie}))
        await ok(c1, ev("identify", {"cookie": cookie, "account": a}))  # the retry
        r = await send(c0, ev("identify", {"cookie": cookie, "account": b}))
        assert r.status_code == 409, r.text
        r = await send(c1, ev("identify", {"cookie": cookie, "account": b}))
        assert r.status_code == 409, r.text
        for c in replicas:
            found = (await c.get("/v1/profiles", params={"cookie": cookie})).json()
            assert found["customer_id"] == a
        deadline = time.monotonic() + 20
        while await page_views(c0, a) != 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # a pending delivery completes in the background
        assert await page_views(c0, a) == 3  # cookie before the merge, a's own, after
        assert await page_views(c0, b) is None


async def test_erasure_reaches_the_other_replicas_cache(replicas) -> None:
    for _ in range(5):
        cookie, a = uid("ck"), uid("acct")
        c0, c1 = replicas
        await ok(c0, ev("identify", {"cookie": cookie, "account": a}))
        await ok(c1, ev("page_view", {"cookie": cookie}))  # replica 1 caches cookie -> a
        assert (await c0.delete(f"/v1/profiles/{a}")).status_code == 200
        await ok(c1, ev("page_view", {"cookie": cookie}))
        assert (await c0.get(f"/v1/profiles/{a}")).status_code == 404
        assert (await c1.get(f"/v1/profiles/{a}")).status_code == 404
        fresh = (await c0.get("/v1/profiles", params={"cookie": cookie})).json()
        assert fresh["customer_id"] == new_profile_id("cookie", cookie)
        assert fresh["counters"]["page_view"]["1h"] == 1
        # A decide by the cookie through the stale replica does not revive a either.
        r = await c1.post("/v1/decide", json={"identifiers": {"cookie": cookie},
                                              "channel": "web", "deadline_ms": 5000})  # fmt: skip
        assert r.status_code == 200 and r.json()["customer_id"] == fresh["customer_id"]
        assert (await c0.get(f"/v1/profiles/{a}")).status_code == 404


async def test_erasure_reaches_a_replica_that_cached_the_anonymous_profile(replicas) -> None:
    """The cookie is cached on its anonymous profile (merged away since), not the account."""
    for _ in range(3):
        cookie, a = uid("ck"), uid("acct")
        c0, c1 = replicas
        await ok(c0, ev("page_view", {"cookie": cookie}))  # replica 0: cookie -> anon-…
        await ok(c1, ev("identify", {"cookie": cookie, "account": a}))
        assert (await c1.delete(f"/v1/profiles/{a}")).status_code == 200
        await ok(c0, ev("page_view", {"cookie": cookie}))
        fresh = (await c1.get("/v1/profiles", params={"cookie": cookie})).json()
        assert fresh["customer_id"] == new_profile_id("cookie", cookie), fresh
        assert fresh["counters"]["page_view"]["1h"] == 1
        assert fresh["identifiers"] == {"cookie": [cookie]}


async def test_stress_racing_identifies_and_retries_keep_every_person_whole(replicas) -> None:
    """Hundreds of people, each with two cookies, a device and an account; identifies
    race page views on both replicas and a fifth of the batches are sent twice."""
    rng = random.Random(16)
    people = []
    for _ in range(200):
        p = {"account": uid("sa"), "cookie": [uid("sc"), uid("sc")], "device": uid("sd")}
        steps = [ev("page_view", {"cookie": p["cookie"][i % 2]}) for i in range(3)]
        steps += [ev("page_view", {"device": p["device"]})]
        steps += [
            ev("identify", {"cookie": p["cookie"][0], "account": p["account"]}),
            ev("identify", {"device": p["device"], "account": p["account"]}),
            ev("identify", {"cookie": p["cookie"][1], "account": p["account"]}),
        ]
        steps += [ev("page_view", {"cookie": p["cookie"][i % 2]}) for i in range(2)]
        rng.shuffle(steps)
        p["steps"] = steps
        people.append(p)
    acked: dict[str, set[str]] = defaultdict(set)  # account -> acknowledged page_view ids
    queue = [(p, step) for p in people for step in p["steps"]]
    rng.shuffle(queue)
    deadline = time.monotonic() + 120

    async def worker(n: int) -> None:
        while queue and time.monotonic() < deadline:
            p, step = queue.pop()
            times = 2 if rng.random() < 0.2 else 1
            for _ in range(times):
                c = replicas[rng.randrange(2)]
                for _attempt in range(20):
                    r = await send(c, step)
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(0.1)
                assert r.status_code == 200, r.text
                if step["type"] == "page_view":
                    acked[p["account"]].add(step["event_id"])

    await asyncio.gather(*(worker(n) for n in range(24)))
    assert not queue, "the stress loop ran out of time"
    # Wait for background deliveries (none expected without kills), then check.
    for p in people:
        ids = [("account", p["account"]), ("device", p["device"])]
        ids += [("cookie", ck) for ck in p["cookie"]]
        for c in replicas:
            found = {
                (await c.get("/v1/profiles", params={t: v})).json()["customer_id"] for t, v in ids
            }
            assert found == {p["account"]}, (p["account"], found)
        assert await page_views(replicas[0], p["account"]) == len(acked[p["account"]])
