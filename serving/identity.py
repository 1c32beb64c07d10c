"""``IdentityResolver``: the ingress side of customer recognition.

Turns a request's typed identifiers into one profile id, linking and merging
profiles when the identifiers span several (see ``models/identity/`` for the
rules).

**The identity map is the authority; the replica's cache is a hint.** A
request whose identifiers are all cached on one profile costs no extra hop,
but it is sent with ``via_cache``: a shard that erased that profile since
answers ``Erased`` and the request is resolved again from the identity map.
Cache entries expire after ``identity_cache_ttl_s``; shards keep erasure
tombstones for twice that.

**Every change to the map is a compare-and-set.** A link runs as:

1. plan from the map (:func:`models.identity.plan.plan_link`);
2. claim unmapped identifiers for the survivor — first claim wins; a lost
   claim means a concurrent request got there first: undo our claims, re-plan;
3. hand each absorbed profile over to the survivor (the saga in
   ``actors/handover.py``): the absorbed profile's shard accepts the first
   survivor only. If another request's survivor won, we learn where the
   profile went, re-plan with that knowledge (usually a 409 conflict, since
   two known customers now claim it) and undo our claims;
4. release identifiers beyond the per-profile limit.

So of two requests racing to link one identifier to two different known
customers, exactly one succeeds and the other gets 409 with nothing of it
applied. Once a hand-over is journalled it is completed (data delivered,
identifiers repointed) even if a shard dies; the answer says which merges
are still pending.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.handover import HandedOver
from actors.replies import Moved
from models.errors import IdentityConflict, Unavailable
from models.identity.config import IdentityConfig, identifier_key
from models.identity.plan import plan_link
from models.identity.table import IdentityRecord

CACHE_SIZE = 100_000
MAX_PLANS = 6


@dataclass
class Resolution:
    """The profile for a request's identifiers, and what resolving it did."""

    profile_id: str
    via_cache: bool = False  # found in this replica's cache (a hint, see the module doc)
    merged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # merged, data or ids still on the way
    incomplete: list[str] = field(default_factory=list)  # not merged yet: retry the request
    dropped: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.merged:
            out["merged"] = self.merged
        if self.pending:
            out["merge_pending"] = self.pending
        if self.incomplete:
            out["merge_incomplete"] = self.incomplete
        if self.dropped:
            out["dropped_identifiers"] = self.dropped
        return out


class ExpiringMap:
    """A bounded LRU map whose entries expire after ``ttl_s`` (the identifier cache)."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> str | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            del self._data[key]
            return None
        return hit[0]

    def put(self, key: str, value: str) -> None:
        self._data[key] = (value, time.monotonic() + self.ttl_s)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: str) -> None:
        self._data.pop(key, None)

    def drop_values(self, *values: str) -> None:
        for k in [k for k, (v, _) in self._data.items() if v in values]:
            del self._data[k]


class IdentityResolver:
    """Resolves identifiers to profile ids for one ingress replica."""

    def __init__(self, region: Any, config: IdentityConfig, cache_ttl_s: float = 300.0) -> None:
        self.region = region
        self.router = region.identities  # the identity shards, by the identity map
        self.config = config
        self.cache = ExpiringMap(CACHE_SIZE, cache_ttl_s)  # identifier key -> profile id
        self.redirects = ExpiringMap(CACHE_SIZE, cache_ttl_s)  # merged-away id -> survivor
        self.lookups = 0
        self.hits = 0
        self.merges = 0
        self.lost_races = 0

    # -- cache --------------------------------------------------------------------------

    def _remember(self, keys: list[str], profile_id: str) -> None:
        for k in keys:
            self.cache.put(k, profile_id)

    def _direct(self, key: str) -> bool:
        return key.partition(":")[0] == self.config.customer_id_type

    def forget_profile(self, profile_id: str) -> None:
        """Drop every cache entry naming ``profile_id`` (erased here or elsewhere)."""
        self.cache.drop_values(profile_id)
        self.redirects.pop(profile_id)
        self.redirects.drop_values(profile_id)

    def moved(self, old: str, new: str) -> None:
        """A shard said ``old`` was merged into ``new``: follow it from now on.

        A redirect, not a cache rewrite: this runs per forwarded event, and
        the cache may hold ~100k entries.
        """
        self.redirects.put(old, new)

    def cached_profile(self, key: str) -> str | None:
        pid = self.cache.get(key)
        for _ in range(MAX_PLANS):  # a short chain of merges at most
            if pid is None:
                return None
            nxt = self.redirects.get(pid)
            if nxt is None:
                break
            pid = nxt
        return pid

    # -- identity shard calls (routed by the identity map: serving/region.py) -------------

    async def _by_shard(self, method: str, keys: list[str], *extra: Any) -> list[Any]:
        """``method(its keys, *extra)`` on each identity shard owning some of ``keys``."""
        return [r for _keys, r in await self.router.scatter(method, keys, str, *extra)]

    async def _all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every identity shard, all at one identity-map epoch."""
        return await self.router.everywhere(method, *args)

    async def owners_of(self, keys: list[str]) -> dict[str, str | None]:
        resolved: dict[str, str | None] = {}
        for part in await self._by_shard("resolve", keys):
            resolved.update(part)
        return resolved

    # -- resolving ----------------------------------------------------------------------

    async def resolve(
        self, identifiers: Mapping[str, str], field: str, use_cache: bool = True
    ) -> Resolution:
        """The profile for these identifiers, linking and merging as needed.

        Raises ``IdentityConflict`` (409) for two known identifiers of one type
        that name different customers, with nothing of this request applied,
        and ``Unavailable`` (503) only when nothing was applied either.
        """
        keys = [identifier_key(t, v) for t, v in identifiers.items()]
        self.lookups += 1
        if use_cache:
            cached = {self.cached_profile(k) for k in keys}
            if len(cached) == 1 and None not in cached:
                self.hits += 1
                return Resolution(str(next(iter(cached))), via_cache=True)
        claimed: dict[str, str] = {}  # key -> survivor, claimed by this request
        try:
            out = await self._link(identifiers, keys, field, claimed)
        except (IdentityConflict, Unavailable):
            await self._undo(claimed)
            raise
        self._remember(keys, out.profile_id)
        return out

    async def _link(
        self, identifiers: Mapping[str, str], keys: list[str], field: str, claimed: dict
    ) -> Resolution:
        went: dict[str, str] = {}  # profiles this request learned were merged elsewhere
        out = Resolution("")
        for _ in range(MAX_PLANS):
            resolved = {k: follow_merges(went, p) for k, p in (await self.owners_of(keys)).items()}
            # A customer_id_type identifier (account) names its profile directly,
            # mapped or not: profiles are also addressed by plain customer_id.
            implicit = [k for k in keys if resolved[k] is None and self._direct(k)]
            for k in implicit:
                resolved[k] = k.partition(":")[2]
            owners = {p for p in resolved.values() if p is not None}
            if len(owners) == 1 and None not in resolved.values() and not implicit:
                out.profile_id = owners.pop()
                return out
            held = await self._held(owners, went)
            plan = plan_link(identifiers, resolved, self.config, held)
            if plan.conflict is not None:
                raise plan.conflict_error(field)
            assert plan.survivor is not None
            survivor = plan.survivor
            claims = [*plan.claims, *(k for k in implicit if resolved[k] == survivor)]
            if claims and not await self._claim(claims, survivor, claimed):
                self.lost_races += 1
                continue  # a concurrent request claimed first: plan again
            if not await self._hand_over(plan.absorbed, survivor, went, out):
                self.lost_races += 1
                continue  # an absorbed profile went to another survivor: plan again
            if plan.dropped:
                await self._by_shard("release", list(plan.dropped), None)
                for k in plan.dropped:
                    self.cache.pop(k)
                out.dropped += list(plan.dropped)
            out.profile_id = survivor
            return out
        raise Unavailable("identifiers keep changing under concurrent links; retry", 1.0)

    async def _held(self, owners: set[str], went: dict[str, str]) -> list[IdentityRecord]:
        """Identifier records of the involved profiles (and of those merged into them)."""
        if not owners:
            return []
        ask = sorted(owners | {a for a in went if follow_merges(went, a) in owners})
        held = []
        for part in await self._all("records_of", ask):
            for key, pid, ts in part:
                held.append(IdentityRecord(key, follow_merges(went, pid), ts))
        return held

    async def _claim(self, keys: list[str], survivor: str, claimed: dict) -> bool:
        """Claim ``keys`` for ``survivor``; False (and our claims undone) if any was taken."""
        results = await self._by_shard("claim", keys, survivor, time.time())
        owners = {k: o for r in results for k, o in r.items()}
        for k in keys:
            if owners.get(k) == survivor:
                claimed.setdefault(k, survivor)
        if all(owners.get(k) == survivor for k in keys):
            return True
        await self._undo(claimed)
        return False

    async def _hand_over(
        self, absorbed: tuple[str, ...], survivor: str, went: dict[str, str], out: Resolution
    ) -> bool:
        """Merge each absorbed profile into ``survivor``; False if one went elsewhere."""
        for profile in absorbed:
            try:
                result = await self.region.call_for(profile, "move_out", survivor, follow=False)
            except Unavailable:
                if out.merged:
                    # Earlier merges of this request stand (never rolled back);
                    # a retry of the same request completes this one.
                    out.incomplete.append(profile)
                    continue
                raise
            if isinstance(result, Moved):
                went[profile] = result.to
                return False
            assert isinstance(result, HandedOver)
            self.moved(profile, survivor)
            self.cache.drop_values(profile)
            self.merges += 1
            out.merged.append(profile)
            if not result.complete:
                out.pending.append(profile)
        return True

    async def _undo(self, claimed: dict[str, str]) -> None:
        """Release the keys this request claimed, where the claimant still holds them."""
        by_owner: dict[str, list[str]] = defaultdict(list)
        for k, owner in claimed.items():
            by_owner[owner].append(k)
        claimed.clear()
        for owner, ks in by_owner.items():
            await self._by_shard("release", ks, owner)

    # -- lookups and erasure ----------------------------------------------------------------

    async def ping_all(self, timeout_s: float = 2.0) -> list[dict | None]:
        """Every identity shard's ping (None for one that does not answer)."""
        return await self.router.ping_all(timeout_s)

    async def lookup(self, identifiers: Mapping[str, str]) -> str | None:
        """The profile these identifiers name, without linking or creating anything."""
        keys = [identifier_key(t, v) for t, v in identifiers.items()]
        resolved = await self.owners_of(keys)
        owners = [resolved[k] for k in keys if resolved.get(k)]
        return owners[0] if owners else None

    async def identifiers_of(self, profile_id: str) -> dict[str, list[str]]:
        """The profile's identifiers by type (from every identity shard)."""
        out: dict[str, list[str]] = defaultdict(list)
        for part in await self._all("records_of", [profile_id]):
            for key, _pid, _ts in part:
                t, _, v = key.partition(":")
                out[t].append(v)
        return dict(out)

    async def erase(self, profile_id: str) -> list[str]:
        """Forget every identifier of an erased profile; return their keys."""
        self.forget_profile(profile_id)
        return [k for keys in await self._all("forget", profile_id) for k in keys]


def follow_merges(went: Mapping[str, str], pid: str | None) -> str | None:
    """Where a profile went, following merges this request learned of."""
    for _ in range(MAX_PLANS):
        if pid is None or pid not in went:
            return pid
        pid = went[pid]
    return pid
