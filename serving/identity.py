"""``IdentityResolver``: the ingress side of customer recognition.

Turns a request's typed identifiers into one profile id, linking and merging
profiles when the identifiers span several (see ``models/identity/`` for
the rules). Lookups are cached per replica: a request whose identifiers are
all cached on one profile costs no extra hop.

A merge runs in this order, and stays correct for concurrent requests and
for other replicas' stale caches:

1. claim unmapped identifiers for the survivor (a lost race means re-plan);
2. move each absorbed profile: its shard removes it, leaves a tombstone
   (``absorbed → survivor``) and pushes the profile to the survivor's shard,
   which merges it (idempotently). An event or decision that reaches the old
   profile afterwards is answered "moved" and re-routed to the survivor;
3. repoint the absorbed profiles' identifiers on every identity shard;
4. release identifiers beyond the per-profile limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from typing import Any

from models.errors import Unavailable
from models.identity.config import IdentityConfig, identifier_key
from models.identity.plan import plan_link
from models.identity.table import IdentityRecord
from serving.region import decode, ping_each

CACHE_SIZE = 100_000
MAX_PLANS = 4


class IdentityResolver:
    """Resolves identifiers to profile ids for one ingress replica."""

    def __init__(self, region: Any, config: IdentityConfig) -> None:
        self.region = region
        self.config = config
        self.cache: OrderedDict[str, str] = OrderedDict()
        self.redirects: OrderedDict[str, str] = OrderedDict()  # merged-away id -> survivor
        self.lookups = 0
        self.hits = 0
        self.merges = 0

    def _shards(self) -> list[Any]:
        return self.region.identity_shards

    def _shard_of_key(self, key: str) -> int:
        return self.region.shard_of(key) % len(self._shards())

    def _remember(self, keys: list[str], profile_id: str) -> None:
        for k in keys:
            self.cache[k] = profile_id
            self.cache.move_to_end(k)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)

    def _direct(self, key: str) -> bool:
        return key.partition(":")[0] == self.config.customer_id_type

    def forget_profile(self, profile_id: str) -> None:
        for k in [k for k, p in self.cache.items() if p == profile_id]:
            del self.cache[k]
        for old in [o for o, n in self.redirects.items() if profile_id in (o, n)]:
            del self.redirects[old]

    def moved(self, old: str, new: str) -> None:
        """A shard said ``old`` was merged into ``new``: follow it from now on.

        A redirect, not a cache rewrite: this runs per forwarded event, and
        the cache may hold ~100k entries.
        """
        self.redirects[old] = new
        self.redirects.move_to_end(old)
        while len(self.redirects) > CACHE_SIZE:
            self.redirects.popitem(last=False)

    def _cached(self, key: str) -> str | None:
        pid = self.cache.get(key)
        for _ in range(MAX_PLANS):  # a short chain of merges at most
            if pid not in self.redirects:
                break
            pid = self.redirects[pid]
        return pid

    async def _call(self, shard: int, method: str, *args: Any) -> Any:
        result = await getattr(self._shards()[shard], method).remote(*args)
        return decode(result, f"identity shard {shard}")

    async def _by_shard(self, method: str, keys: list[str], *extra: Any) -> list[Any]:
        groups: dict[int, list[str]] = defaultdict(list)
        for k in keys:
            groups[self._shard_of_key(k)].append(k)
        return list(
            await asyncio.gather(*(self._call(s, method, ks, *extra) for s, ks in groups.items()))
        )

    async def _all(self, method: str, *args: Any) -> list[Any]:
        return list(
            await asyncio.gather(
                *(self._call(i, method, *args) for i in range(len(self._shards())))
            )
        )

    async def resolve(
        self, identifiers: Mapping[str, str], field: str
    ) -> tuple[str, dict[str, Any]]:
        """The profile id for these identifiers, linking and merging as needed.

        Returns ``(profile_id, report)``; the report names merged profiles and
        dropped identifiers. Raises ``IdentityConflict`` (409) for two known
        identifiers of one type that name different customers.
        """
        keys = [identifier_key(t, v) for t, v in identifiers.items()]
        self.lookups += 1
        cached = {self._cached(k) for k in keys}
        if len(cached) == 1 and None not in cached:
            self.hits += 1
            return next(iter(cached)), {}
        for _ in range(MAX_PLANS):
            resolved: dict[str, str | None] = {}
            for part in await self._by_shard("resolve", keys):
                resolved.update(part)
            # A customer_id_type identifier (account) names its profile directly,
            # mapped or not: profiles are also addressed by plain customer_id.
            implicit = [k for k in keys if resolved[k] is None and self._direct(k)]
            for k in implicit:
                resolved[k] = k.partition(":")[2]
            owners = {p for p in resolved.values() if p is not None}
            if len(owners) == 1 and None not in resolved.values() and not implicit:
                pid = owners.pop()
                self._remember(keys, pid)
                return pid, {}
            held: list[IdentityRecord] = []
            if owners:
                for part in await self._all("records_of", sorted(owners)):
                    held.extend(IdentityRecord(*r) for r in part)
            plan = plan_link(identifiers, resolved, self.config, held)
            if plan.conflict is not None:
                raise plan.conflict_error(field)
            assert plan.survivor is not None
            survivor = plan.survivor
            claims = [*plan.claims, *(k for k in implicit if resolved[k] == survivor)]
            if claims:
                results = await self._by_shard("claim", claims, survivor, time.time())
                lost = any(o != survivor for r in results for o in r.values())
                if lost:
                    continue  # a concurrent request claimed first: plan again
            for absorbed in plan.absorbed:
                handed = await self.region.call_for(absorbed, "move_out", survivor, follow=False)
                if not handed.delivered:
                    raise Unavailable("profile merge is pending; retry", 1.0, code="merge_pending")
                await self._all("repoint_profile", absorbed, survivor)
                self.moved(absorbed, survivor)
                self.merges += 1
            if plan.dropped:
                await self._by_shard("release", list(plan.dropped))
                for k in plan.dropped:
                    self.cache.pop(k, None)
            self._remember(keys, survivor)
            report: dict[str, Any] = {}
            if plan.absorbed:
                report["merged"] = list(plan.absorbed)
            if plan.dropped:
                report["dropped_identifiers"] = list(plan.dropped)
            return survivor, report
        raise Unavailable("identifiers keep changing under concurrent links; retry", 1.0)

    async def ping_all(self, timeout_s: float = 2.0) -> list[dict | None]:
        """Every identity shard's ping (None for one that does not answer)."""
        return await ping_each(self._shards(), timeout_s)

    async def lookup(self, identifiers: Mapping[str, str]) -> str | None:
        """The profile these identifiers name, without linking or creating anything."""
        keys = [identifier_key(t, v) for t, v in identifiers.items()]
        resolved: dict[str, str | None] = {}
        for part in await self._by_shard("resolve", keys):
            resolved.update(part)
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
