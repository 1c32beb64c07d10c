"""``Ingress``: what one ingress replica holds, and the steps routes are made of.

A replica is stateless in the sense that matters (all customer state lives in
the shards), but it holds caches and counters: the :class:`ShardRegion`
(topology), the :class:`IdentityResolver` (identifier cache), the
:class:`DecideCoalescer` (batches in flight) and the active catalogue (for
request validation and fallbacks). Routes (``serving/routes/``) read top to
bottom: decode → resolve the customer → call the owning shard → encode; the
steps they share live here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request

from actors.metrics import IngressMetrics
from actors.replies import Erased, Expired
from models.customer.events import Event
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest
from models.errors import IdentityConflict, Unavailable, ValidationError
from models.identity.config import IdentityConfig
from models.settings import Settings
from serving.coalesce import DecideCoalescer
from serving.fallbacks import FallbackTally
from serving.identity import IdentityResolver
from serving.region import ShardRegion

log = logging.getLogger("rtim.ingress")

CATALOG_CHECK_S = 1.0
SHED_RETRY_AFTER_S = 1.0
OVERLOAD_HEADER = "rtim-on-overload"  # "fallback" (default) or "reject": 503 + Retry-After
REQUEST_START_HEADER = "x-request-start"  # "t=<epoch s, ms or µs>": when it reached the edge
MAX_QUEUED_S = 60.0  # older request-start stamps are taken as clock trouble, not queueing
REFUSAL_RECHECK_S = 0.1
FALLBACK_SEND_S = 0.2  # fallback history rows are sent to their shards this often
T = TypeVar("T")


class Ingress:
    """One replica's caches, counters and shared route steps."""

    def __init__(self, settings: Settings, metrics: bool = True) -> None:
        self.settings = settings
        self.region = ShardRegion(settings)
        self.identity_config = IdentityConfig.from_settings_value(settings.identity or None)
        self.identity = IdentityResolver(
            self.region, self.identity_config, settings.identity_cache_ttl_s
        )
        self.region.on_moved = self.identity.moved
        self.coalescer = DecideCoalescer(
            self.region,
            settings.coalesce_max_batch,
            max_calls=settings.coalesce_max_calls,
            max_queue=settings.max_inflight_per_shard,
        )
        self.catalog: Catalog | None = None
        self._next_catalog_check = 0.0
        self._last_refusal_sync = 0.0
        self._catalog_check: asyncio.Task | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self.inflight = 0
        # Fallback answers wait here for their shards' interaction history.
        self.fallback_rows: list[DecisionRecord] = []
        self.fallback_rows_dropped = 0
        self._fallback_sender: asyncio.Task | None = None
        self.fallbacks = 0
        self.fallback_tally = FallbackTally()  # counted into the reports (serving/fallbacks.py)
        self.shed = 0  # decides not sent to a shard: no time left or its queue too long
        self.rejected = 0  # decides answered 503 (the caller asked for no fallback)
        self.fallback_counter: Any = None
        self.metrics: IngressMetrics | None = None
        if metrics:
            self.metrics = IngressMetrics()
            from ray.serve import metrics as serve_metrics

            # Exported with Ray's metrics (Prometheus) as ray_rtim_decide_fallbacks.
            self.fallback_counter = serve_metrics.Counter(
                "rtim_decide_fallbacks",
                description="Decides answered with the catalogue fallback (deadline missed "
                "or shard unavailable).",
            )

    async def ready(self) -> Ingress:
        """Connect to the coordinator on first use (replicas start before it answers).

        Afterwards, at most once every ``CATALOG_CHECK_S``, a background check
        compares the active catalogue's version with ours: a catalogue put
        through another replica is used here within about a second.
        """
        if not self._started:
            async with self._start_lock:
                if not self._started:
                    await self.region.start()
                    self.catalog = load_catalog(await self.region.coordinator.get_catalog.remote())
                    self._started = True
        elif time.monotonic() >= self._next_catalog_check and self._catalog_check is None:
            self._next_catalog_check = time.monotonic() + CATALOG_CHECK_S
            self._catalog_check = asyncio.get_running_loop().create_task(self.sync_catalog())
            self._catalog_check.add_done_callback(self._checked)
        return self

    def _checked(self, task: asyncio.Task) -> None:
        self._catalog_check = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("catalogue check failed: %s", task.exception())

    async def sync_catalog(self) -> bool:
        """Fetch the active catalogue if its version is not ours; True if it changed."""
        versions = await self.region.coordinator.versions.remote()
        if self.catalog is not None and versions["catalog_version"] == self.catalog.version:
            return False
        self.catalog = load_catalog(await self.region.coordinator.get_catalog.remote())
        return True

    async def validated(self, parse: Callable[[Catalog | None], T]) -> T:
        """``parse(catalog)``; if our catalogue refuses the request, retry with the active one.

        A request naming a channel or placement that only a catalogue just
        put through another replica has is then accepted at once. The
        coordinator is asked at most every ``REFUSAL_RECHECK_S``, so a client
        sending bad requests in a loop cannot turn each into an actor call.
        """
        try:
            return parse(self.catalog)
        except ValidationError:
            if time.monotonic() - self._last_refusal_sync < REFUSAL_RECHECK_S:
                raise
            self._last_refusal_sync = time.monotonic()
            if not await self.sync_catalog():
                raise
        return parse(self.catalog)

    async def refresh_catalog(self, records: list[Any]) -> None:
        """A shard decided with a catalogue we do not have: fetch the active one."""
        for r in records:
            known = self.catalog.version if self.catalog is not None else None
            if isinstance(r, DecisionRecord) and r.catalog_version != known:
                self.catalog = load_catalog(await self.region.coordinator.get_catalog.remote())
                return

    # -- recognition ------------------------------------------------------------------

    def with_customer_id(
        self, identifiers: dict, customer_id: str | None, field: str = "customer_id"
    ) -> dict:
        """``customer_id`` beside identifiers is the ``customer_id_type`` identifier."""
        cid_type = self.identity_config.customer_id_type
        if not customer_id or cid_type is None:
            return identifiers
        if identifiers.get(cid_type, customer_id) != customer_id:
            raise IdentityConflict(
                f"customer_id and identifiers.{cid_type} name different customers", field
            )
        return {cid_type: customer_id, **identifiers}

    async def recognise(
        self, events: list[Event], use_cache: bool = True
    ) -> tuple[list[Event], dict[str, list[str]], set[str]]:
        """Resolve events that carry identifiers to profile ids (linking as needed).

        Returns the events, the identity report (merges, drops) and the
        profile ids that came from this replica's cache.
        """
        out: list[Event] = []
        report: dict[str, list[str]] = {}
        cached: set[str] = set()
        for i, ev in enumerate(events):
            if ev.identifiers:
                ids = self.with_customer_id(
                    dict(ev.identifiers), ev.customer_id or None, f"events[{i}].customer_id"
                )
                res = await self.identity.resolve(ids, f"events[{i}].identifiers", use_cache)
                for key, values in res.report().items():
                    report.setdefault(key, []).extend(values)
                if res.via_cache:
                    cached.add(res.profile_id)
                ev = ev._replace(customer_id=res.profile_id)
            out.append(ev)
        return out, report, cached

    async def record_events(self, events: list[Event]) -> dict[str, Any]:
        """Recognise, apply and acknowledge a validated batch of events.

        Events whose cached identifier lookup named a profile erased since
        are resolved again from the identity map and applied to what it says.
        """
        batch, report, cached = await self.recognise(events)
        applied, dups, erased = await self.region.apply_events(batch, cached)
        if erased:
            originals = {(e.event_id, r.customer_id): e for e, r in zip(events, batch)}
            for ev in erased:
                self.identity.forget_profile(ev.customer_id)
            # An event forwarded after a merge is no longer under its original
            # id; its identifiers alone say who it belongs to.
            retry = [originals.get((ev.event_id, ev.customer_id)) or ev._replace(customer_id="")
                     for ev in erased]  # fmt: skip
            again, more, _ = await self.recognise(retry, use_cache=False)
            for key, values in more.items():
                report.setdefault(key, []).extend(values)
            n, d, _ = await self.region.apply_events(again, set())
            applied, dups = applied + n, dups + d
        answer: dict[str, Any] = {"accepted": len(batch), "applied": applied, "duplicates": dups}
        if report:
            answer["identity"] = report
        return answer

    # -- deciding ---------------------------------------------------------------------

    def deadline_s(self, req: DecideRequest) -> float:
        deadline_s = (req.deadline_ms or self.settings.decide_deadline_ms) / 1000.0
        return min(deadline_s, self.settings.shard_call_timeout_s)

    async def decide(
        self,
        req: DecideRequest,
        identifiers: dict[str, str] | None = None,
        arrived: float | None = None,
        shed_with_503: bool = False,
    ) -> DecisionRecord:
        """The owning shard's decision, or the catalogue's fallback when it cannot answer
        within the deadline (late, down, restarting or unable to write).

        The deadline counts from ``arrived`` (monotonic s; default now). A
        request that cannot be answered in time is shed without a shard call:
        its budget is gone on arrival, or the shard's queue in this replica is
        longer than the budget (see :meth:`DecideCoalescer.expected_wait_s`).
        Its answer (fallback or 503) is given at the deadline, not sooner (a
        hold no longer than that expected wait); one for a shard that is down
        or restarting is given at once. ``shed_with_503``: answer such a
        request with ``Unavailable`` (503 + ``Retry-After``) instead of the
        fallback. ``identifiers``: what ``req.customer_id`` was resolved
        from; if a cached lookup named a profile erased since, they are
        resolved again.
        """
        started = time.monotonic() if arrived is None else arrived
        outcome = await self._decide_once(req, started)
        if isinstance(outcome, Erased) and identifiers:
            self.identity.forget_profile(outcome.customer_id)
            res = await self.identity.resolve(identifiers, "identifiers", use_cache=False)
            req = dataclasses.replace(req, customer_id=res.profile_id, via_cache=False)
            outcome = await self._decide_once(req, started)
        if not isinstance(outcome, DecisionRecord):
            if shed_with_503:
                self.rejected += 1
                raise Unavailable(
                    "no decision within the deadline; retry", SHED_RETRY_AFTER_S, code="deadline"
                )
            return self.fallback(req)
        await self.refresh_catalog([outcome])
        return outcome

    async def _decide_once(
        self, req: DecideRequest, started: float
    ) -> DecisionRecord | Expired | Erased:
        budget_s = self.deadline_s(req) - (time.monotonic() - started)
        if budget_s <= 0 or self.coalescer.expected_wait_s(req.customer_id) >= budget_s:
            self.shed += 1
            if budget_s > 0:
                # Shed for load: answered at the deadline, not before. A caller that
                # asks again at once (a closed loop, a retry storm) would turn each
                # quick fallback into another request, and the fallbacks would
                # starve the decisions. (A shard that is down answers at once.)
                await asyncio.sleep(budget_s)
            return Expired()
        try:
            outcome = await asyncio.wait_for(
                self.coalescer.decide(req, time.time() + budget_s), timeout=budget_s
            )
        except asyncio.TimeoutError:
            return Expired()
        except Unavailable as exc:
            if exc.code == "overloaded":
                raise
            return Expired()  # down, restarting or unable to write: the fallback answers
        return outcome

    def fallback(self, req: DecideRequest) -> DecisionRecord:
        """The catalogue's fallback answer, for a shard that missed the deadline."""
        assert self.catalog is not None
        self.fallbacks += 1
        if self.fallback_counter is not None:
            self.fallback_counter.inc()
        if self.metrics is not None:
            self.metrics.fallback(req.channels[0], self.catalog)
        offers = self.catalog.fallback_offers(req.channels)[: req.limit]
        now = time.time()
        self.fallback_tally.add(req.channels, offers, now)
        self.fallback_tally.start(lambda: self.region.shards)
        experiments = self.catalog.experiments
        arm = experiments.assign(req.customer_id, req.channels[0]) if experiments else None
        record = DecisionRecord.fallback_for(
            req.customer_id, list(req.channels), offers, self.catalog.version, now, arm
        )
        self._queue_fallback(record)
        return record

    # -- fallbacks to the shards' interaction history ---------------------------------

    def _queue_fallback(self, record: DecisionRecord) -> None:
        """Keep a fallback for its shard's history; bounded, counted when dropped."""
        if not self.settings.history:
            return
        if len(self.fallback_rows) >= self.settings.history_fallback_queue:
            self.fallback_rows_dropped += 1
            return
        self.fallback_rows.append(record)
        if self._fallback_sender is None or self._fallback_sender.done():
            self._fallback_sender = asyncio.get_running_loop().create_task(self._send_fallbacks())

    async def _send_fallbacks(self) -> None:
        """Deliver queued fallbacks to their owning shards until none are left.

        A shard that does not take them (it is why there was a fallback) is
        tried again after a pause; the queue's bound drops the newest beyond it.
        """
        pause = FALLBACK_SEND_S
        while self.fallback_rows:
            await asyncio.sleep(pause)
            rows, self.fallback_rows = self.fallback_rows, []
            by_shard: dict[int, list[DecisionRecord]] = {}
            for r in rows:
                by_shard.setdefault(self.region.shard_of(r.customer_id), []).append(r)
            failed: list[DecisionRecord] = []
            for index, group in by_shard.items():
                try:
                    await asyncio.wait_for(
                        self.region.shards[index].record_fallbacks.remote(group), 5.0
                    )
                except Exception as exc:  # down or restarting: keep them, try again
                    log.warning("fallback history for shard %d not delivered: %s", index, exc)
                    failed.extend(group)
            room = self.settings.history_fallback_queue - len(self.fallback_rows)
            self.fallback_rows[:0] = failed[:room]
            self.fallback_rows_dropped += max(0, len(failed) - room)
            pause = min(pause * 2, 5.0) if failed else FALLBACK_SEND_S

    def counters(self) -> dict[str, Any]:
        c, i = self.coalescer, self.identity
        return {
            "decide_fallbacks": self.fallbacks,
            "decide_shed": self.shed,
            "gc_frozen": gc.get_freeze_count(),  # the start-up heap (serving/deployment.py)
            "decide_rejected": self.rejected,
            "fallback_history_queued": len(self.fallback_rows),
            "fallback_history_dropped": self.fallback_rows_dropped,
            "inflight": self.inflight,
            "coalesced_batches": c.batches,
            "coalesced_requests": c.requests,
            "mean_batch": round(c.requests / c.batches, 2) if c.batches else None,
            "map_reroutes": self.region.reroutes,
            "map_holds": self.region.holds,
            "identity_map_reroutes": self.region.identities.reroutes,
            "identity_map_holds": self.region.identities.holds,
            "shard_calls": {"wire": self.region.wire_calls, "ray": self.region.ray_calls},
            "identity_lookups": i.lookups,
            "identity_cache_hits": i.hits,
            "identity_merges": i.merges,
            "identity_lost_races": i.lost_races,
            "catalog_version": self.catalog.version if self.catalog else None,
        }


def sheds_with_503(request: Request) -> bool:
    """Whether the caller asked for 503 + ``Retry-After`` instead of the fallback."""
    value = request.headers.get(OVERLOAD_HEADER)
    if value is None:
        return False
    value = value.strip().lower()
    if value not in ("fallback", "reject"):
        raise ValidationError("RTIM-On-Overload must be 'fallback' or 'reject'", OVERLOAD_HEADER)
    return value == "reject"


def arrival(request: Request, now: float) -> float:
    """When the request reached the server (monotonic s), from ``X-Request-Start``.

    The edge (a load balancer, or HAProxy with ``http-request set-header
    X-Request-Start t=%Ts%ms``) stamps it in epoch seconds, milliseconds or
    microseconds (``t=`` optional); without a usable stamp, ``now``.
    """
    stamp = request.headers.get(REQUEST_START_HEADER)
    if not stamp:
        return now
    try:
        t = float(stamp.strip().removeprefix("t="))
    except ValueError:
        return now
    if not math.isfinite(t) or t <= 0:
        return now
    t = t / 1e6 if t > 1e14 else t / 1e3 if t > 1e11 else t
    queued = time.time() - t
    return now - queued if 0.0 < queued <= MAX_QUEUED_S else now
