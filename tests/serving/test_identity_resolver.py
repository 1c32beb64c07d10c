"""``IdentityResolver``: the cache is a hint, and every map change is a compare-and-set.

Pure parts (the expiring cache, following merges) run without Ray; the rest
resolve through a resolver of their own against the session server's real
identity and profile shards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from models.errors import IdentityConflict
from models.identity.config import IdentityConfig, identifier_key, new_profile_id
from models.settings import Settings
from serving.identity import ExpiringMap, IdentityResolver, follow_merges
from serving.region import ShardRegion


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- pure ---------------------------------------------------------------------------


def test_cache_entries_expire_after_their_lifetime() -> None:
    cache = ExpiringMap(size=10, ttl_s=0.05)
    cache.put("cookie:a", "p1")
    assert cache.get("cookie:a") == "p1"
    time.sleep(0.08)
    assert cache.get("cookie:a") is None and len(cache) == 0


def test_cache_is_bounded_and_forgets_the_least_recent_first() -> None:
    cache = ExpiringMap(size=2, ttl_s=60)
    for k in ("a", "b", "c"):
        cache.put(k, k.upper())
    assert [cache.get(k) for k in "abc"] == [None, "B", "C"]
    cache.drop_values("C")
    assert cache.get("c") is None and cache.get("b") == "B"


def test_following_merges_stops_at_the_survivor_and_on_cycles() -> None:
    assert follow_merges({"a": "b", "b": "c"}, "a") == "c"
    assert follow_merges({}, "a") == "a" and follow_merges({"a": "b"}, None) is None
    assert follow_merges({"a": "b", "b": "a"}, "a") in ("a", "b")  # bounded, no hang


# -- against the session server ---------------------------------------------------------


@pytest.fixture
async def resolver(server: str, server_settings: Settings) -> AsyncIterator[IdentityResolver]:
    region = ShardRegion(server_settings)
    await region.start()
    yield IdentityResolver(region, IdentityConfig(), cache_ttl_s=60)


async def test_a_second_lookup_is_a_cache_hit_marked_as_such(resolver: IdentityResolver) -> None:
    cookie = uid("ck")
    first = await resolver.resolve({"cookie": cookie}, "identifiers")
    assert first.profile_id == new_profile_id("cookie", cookie) and not first.via_cache
    again = await resolver.resolve({"cookie": cookie}, "identifiers")
    assert again.profile_id == first.profile_id and again.via_cache
    fresh = await resolver.resolve({"cookie": cookie}, "identifiers", use_cache=False)
    assert not fresh.via_cache


async def test_a_refused_link_leaves_nothing_of_itself_in_the_map(
    resolver: IdentityResolver,
) -> None:
    cookie, e1, e2 = uid("ck"), uid("mail-1"), uid("mail-2")
    won = await resolver.resolve({"cookie": cookie, "email_sha256": e1}, "identifiers")
    device = uid("dev")
    with pytest.raises(IdentityConflict) as err:
        await resolver.resolve(
            {"cookie": cookie, "email_sha256": e2, "device": device}, "identifiers"
        )
    assert err.value.field == "identifiers.email_sha256"
    # Neither the second e-mail nor the new device was claimed by the refused request.
    assert await resolver.lookup({"email_sha256": e2}) is None
    assert await resolver.lookup({"device": device}) is None
    assert await resolver.lookup({"cookie": cookie}) == won.profile_id


async def test_two_known_customers_racing_for_one_new_cookie_one_wins(
    resolver: IdentityResolver, server_settings: Settings
) -> None:
    other_region = ShardRegion(server_settings)
    await other_region.start()
    other = IdentityResolver(other_region, IdentityConfig(), cache_ttl_s=60)
    for _ in range(5):
        cookie, x, y = uid("ck"), uid("acct-x"), uid("acct-y")
        results = await asyncio.gather(
            resolver.resolve({"cookie": cookie, "account": x}, "identifiers"),
            other.resolve({"cookie": cookie, "account": y}, "identifiers"),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, IdentityConflict)]
        assert len(wins) == 1 and len(losses) == 1, results
        winner = wins[0].profile_id
        assert await resolver.lookup({"cookie": cookie}) == winner
        loser = y if winner == x else x
        # The loser's own account identifier was not left claimed by the refused link.
        keys = await resolver.owners_of([identifier_key("account", loser)])
        assert keys == {identifier_key("account", loser): None}


async def test_forgetting_a_profile_drops_its_cache_entries_and_redirects(
    resolver: IdentityResolver,
) -> None:
    cookie = uid("ck")
    pid = (await resolver.resolve({"cookie": cookie}, "identifiers")).profile_id
    resolver.moved(pid, "survivor")
    assert resolver.cached_profile(identifier_key("cookie", cookie)) == "survivor"
    resolver.forget_profile("survivor")
    assert resolver.cached_profile(identifier_key("cookie", cookie)) == pid
    resolver.forget_profile(pid)
    assert resolver.cached_profile(identifier_key("cookie", cookie)) is None
