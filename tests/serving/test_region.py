"""``ShardRegion``: reply decoding, stale-map re-routing and merge following.

The routing tests run against the real shards of the session's test server,
through a second region in the test process, with a deliberately stale map.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from actors.replies import Expired, Failed, Moved, ShardUnavailable, StaleEpoch
from models.customer.events import Event
from models.decisioning.request import DecideRequest
from models.errors import CatalogError, IdentityConflict, Unavailable, ValidationError
from models.identity.config import new_profile_id
from models.partitioning import PartitionMap
from models.settings import Settings
from serving.region import ShardRegion, decode

# -- decode (no server) -------------------------------------------------------------


def test_unavailable_shard_becomes_unavailable_naming_the_shard() -> None:
    with pytest.raises(Unavailable) as err:
        decode(ShardUnavailable("journal write failed: no space"), "shard 3")
    assert err.value.code == "storage_unavailable"
    assert err.value.message == "shard 3: journal write failed: no space"
    assert err.value.retry_after_s == 5.0


def test_failed_call_becomes_the_error_it_names() -> None:
    with pytest.raises(CatalogError) as err:
        decode(Failed("invalid_catalog", "offer x: bad rule", "offers[0].rules"), "shard 0")
    assert err.value.message == "offer x: bad rule"
    assert err.value.field == "offers[0].rules"
    with pytest.raises(IdentityConflict):
        decode(Failed("identity_conflict", "two accounts"), "shard 0")
    with pytest.raises(ValidationError):
        decode(Failed("some_future_code", "?"), "shard 0")


@pytest.mark.parametrize(
    "reply",
    [None, True, {"applied": 1}, [Expired(), Moved("b")], StaleEpoch(2), Moved("b")],
)
def test_other_replies_pass_through_unchanged(reply: object) -> None:
    assert decode(reply, "shard 0") is reply


# -- routing against the test server ------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def page_view(customer_id: str) -> Event:
    return Event(uuid.uuid4().hex, customer_id, "page_view", time.time(), None, {}, None, None)


async def post(client: httpx.AsyncClient, *events: dict) -> dict:
    r = await client.post("/v1/events", json={"events": list(events)})
    assert r.status_code == 200, r.text
    return r.json()


async def page_views(client: httpx.AsyncClient, customer_id: str) -> int:
    r = await client.get(f"/v1/profiles/{customer_id}")
    assert r.status_code == 200, r.text
    return r.json()["counters"]["page_view"]["1h"]


@pytest.fixture
async def region(server: str, server_settings: Settings) -> AsyncIterator[ShardRegion]:
    r = ShardRegion(server_settings)
    await r.start()
    yield r


def make_stale(region: ShardRegion) -> int:
    """Give ``region`` an older map that sends every customer to the wrong shard."""
    real = region.map
    assert real is not None and real.shards > 1 and real.epoch > 0
    rotated = tuple((owner + 1) % real.shards for owner in real.owners)
    region.map = PartitionMap(real.epoch - 1, rotated, real.shards)
    return real.epoch


async def test_stale_map_is_refreshed_and_the_call_reaches_the_owner(
    region: ShardRegion, client: httpx.AsyncClient
) -> None:
    cid = uid("c")
    await post(client, {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"})
    owner = region.shard_of(cid)
    real_epoch = make_stale(region)
    assert region.shard_of(cid) != owner
    before = region.reroutes

    profile = await region.call_for(cid, "get_profile")

    assert profile["customer_id"] == cid
    assert profile["counters"]["page_view"]["1h"] == 1
    assert region.map is not None and region.map.epoch == real_epoch
    assert region.shard_of(cid) == owner
    assert region.reroutes > before


async def test_stale_map_events_are_rerouted_and_applied_exactly_once(
    region: ShardRegion, client: httpx.AsyncClient
) -> None:
    views = {uid("c"): n for n in (1, 2, 3, 1, 2, 3)}
    events = [page_view(cid) for cid, n in views.items() for _ in range(n)]
    real_epoch = make_stale(region)
    before = region.reroutes

    applied, duplicates, *_ = await region.apply_events(events)

    assert (applied, duplicates) == (len(events), 0)
    assert region.map is not None and region.map.epoch == real_epoch
    assert region.reroutes > before
    assert {cid: await page_views(client, cid) for cid in views} == views
    # The same batch again (a client retry) is recognised, not counted twice.
    make_stale(region)
    applied, duplicates, *_ = await region.apply_events(events)
    assert (applied, duplicates) == (0, len(events))
    assert {cid: await page_views(client, cid) for cid in views} == views


async def test_stale_map_decides_are_rerouted_and_answered_in_request_order(
    region: ShardRegion,
) -> None:
    customers = [uid("d") for _ in range(6)]
    make_stale(region)
    before = region.reroutes

    answers = await region.decide_batch([DecideRequest(c, ("web",)) for c in customers])

    assert [a.customer_id for a in answers] == customers
    assert region.reroutes > before


async def test_call_for_follows_a_profile_merged_into_a_known_customer(
    region: ShardRegion, client: httpx.AsyncClient
) -> None:
    cookie, account = uid("ck"), uid("acct")
    await post(client, {"event_id": uuid.uuid4().hex, "type": "page_view",
                        "identifiers": {"cookie": cookie}})  # fmt: skip
    await post(client, {"event_id": uuid.uuid4().hex, "type": "profile_update",
                        "customer_id": account, "attributes": {"age": 40}})  # fmt: skip
    anon = new_profile_id("cookie", cookie)
    r = await post(client, {"event_id": uuid.uuid4().hex, "type": "identify",
                            "identifiers": {"cookie": cookie, "account": account}})  # fmt: skip
    assert r["identity"]["merged"] == [anon]
    heard: list[tuple[str, str]] = []
    region.on_moved = lambda old, new: heard.append((old, new))

    assert await region.call_for(anon, "get_profile", follow=False) == Moved(account)
    assert heard == []
    profile = await region.call_for(anon, "get_profile")

    assert profile["customer_id"] == account
    assert profile["counters"]["page_view"]["1h"] == 1
    assert profile["attributes"]["age"] == 40
    assert heard == [(anon, account)]


async def test_unknown_customer_reads_as_none(region: ShardRegion) -> None:
    assert await region.call_for(uid("nobody"), "get_profile") is None
