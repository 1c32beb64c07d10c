"""Prometheus metrics for operators, through Ray's metrics system.

Every metric is a :mod:`ray.util.metrics` object; Ray's metrics agent on each
node serves them to Prometheus on the node's metrics export port, with the
``ray_`` prefix (``ray_rtim_decisions_total``). Names, labels and what to
alert on are in ``docs/monitoring.md``.

Label values are **bounded**: channel and offer labels are only names the
active catalogue declares, outcomes only the response vocabulary; anything
else is counted as ``other``, so a client cannot grow the series count.

Counting is batch-level: a shard call tallies its batch in a dict and makes
one ``inc`` per distinct label set, so the per-decision cost is a dict update.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from models.decisioning.catalog import Catalog
from models.decisioning.record import DecisionRecord

OTHER = "other"
# Every metric this module defines (Prometheus adds the ``ray_`` prefix).
METRIC_NAMES = ("rtim_decisions_total", "rtim_offers_chosen_total", "rtim_responses_total",
                "rtim_events_applied_total", "rtim_journal_commit_seconds",
                "rtim_model_updates_total", "rtim_profiles", "rtim_loop_pause_seconds")  # fmt: skip
OUTCOMES = frozenset({"accepted", "rejected", "clicked", "ignored"})
# Seconds a shard's event loop was held past actors/loopwatch.py's SLOW_S (25 ms).
PAUSE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
# Seconds; group commits are ~0.1 ms without fsync and a few ms with it.
COMMIT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  1.0]  # fmt: skip


class Labels:
    """Bounded label values from a catalogue: its channel names and offer ids."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        self.channels = frozenset(catalog.channels) if catalog is not None else frozenset()
        self.offers = frozenset(catalog.offers) if catalog is not None else frozenset()

    def channel(self, name: str | None) -> str:
        return name if name in self.channels else OTHER  # type: ignore[return-value]

    def offer(self, offer_id: str | None) -> str:
        return offer_id if offer_id in self.offers else OTHER  # type: ignore[return-value]


def outcome_label(outcome: Any) -> str:
    return outcome if outcome in OUTCOMES else OTHER


class _Metrics:
    """The metric objects, made once per process (Ray registers them by name)."""

    _made: _Metrics | None = None

    def __init__(self) -> None:
        self.decisions = Counter(
            "rtim_decisions_total",
            "Decide answers by channel and kind: decision (offers), no_message, fallback.",
            tag_keys=("channel", "kind"),
        )
        self.offers = Counter(
            "rtim_offers_chosen_total",
            "Offers chosen by decisions, by channel and offer.",
            tag_keys=("channel", "offer"),
        )
        self.responses = Counter(
            "rtim_responses_total",
            "Response events applied, by outcome and offer.",
            tag_keys=("outcome", "offer"),
        )
        self.events = Counter(
            "rtim_events_applied_total",
            "Events applied (not duplicates) per profile shard.",
            tag_keys=("shard",),
        )
        self.commit = Histogram(
            "rtim_journal_commit_seconds",
            "Journal group-commit latency (write + fsync) per profile shard.",
            boundaries=COMMIT_BUCKETS,
            tag_keys=("shard",),
        )
        self.model_updates = Counter(
            "rtim_model_updates_total",
            "Model updates per shard: learning_merge (adaptive evidence merged from peers), "
            "model_activation, catalog_activation.",
            tag_keys=("shard", "kind"),
        )
        self.profiles = Gauge(
            "rtim_profiles", "Profiles held per profile shard.", tag_keys=("shard",)
        )
        self.pauses = Histogram(
            "rtim_loop_pause_seconds",
            "Pauses of a profile shard's event loop longer than 25 ms (nothing else ran).",
            boundaries=PAUSE_BUCKETS,
            tag_keys=("shard",),
        )

    @classmethod
    def get(cls) -> _Metrics:
        if cls._made is None:
            cls._made = cls()
        return cls._made


class ShardMetrics:
    """What one profile shard reports."""

    MAX_PENDING = 4096  # commit times kept between flushes; more are dropped (a sample)

    def __init__(self, shard: int) -> None:
        self.m = _Metrics.get()
        self.shard = {"shard": str(shard)}
        self._labels = Labels(None)
        self._commits: list[float] = []
        # Counts since the last flush: a Ray metric update costs ~10 µs here and
        # more in the metrics agent, so the hot paths add to dicts (~0.1 µs).
        self._decisions: dict[tuple[str, str], int] = {}
        self._offers: dict[tuple[str, str], int] = {}
        self._events = 0
        self._responses: dict[tuple[str, str], int] = {}

    def labels(self, catalog: Catalog) -> Labels:
        if self._labels.catalog is not catalog:
            self._labels = Labels(catalog)
        return self._labels

    def decided(self, records: Iterable[DecisionRecord], catalog: Catalog) -> None:
        lab = self.labels(catalog)
        kinds, offers = self._decisions, self._offers
        for r in records:
            if r.offers:
                key = (lab.channel(r.offers[0].channel), "decision")
                for o in r.offers:
                    k = (lab.channel(o.channel), lab.offer(o.offer_id))
                    offers[k] = offers.get(k, 0) + 1
            else:
                key = (lab.channel(r.channels[0] if r.channels else None), "no_message")
            kinds[key] = kinds.get(key, 0) + 1

    def applied(self, events: int, responses: dict[tuple[str, str | None], int],
                catalog: Catalog) -> None:  # fmt: skip
        """``events`` applied; ``responses``: (outcome, offer id) -> count among them."""
        self._events += events
        lab = self.labels(catalog)
        for (outcome, offer), n in responses.items():
            key = (outcome_label(outcome), lab.offer(offer))
            self._responses[key] = self._responses.get(key, 0) + n

    def committed(self, seconds: float) -> None:
        """Note a journal commit's latency; :meth:`flush` reports it off the commit path
        (a histogram observation costs ~10 µs, a list append ~50 ns)."""
        if len(self._commits) < self.MAX_PENDING:
            self._commits.append(seconds)

    def flush(self, profiles: int, pauses: Iterable[float] = ()) -> None:
        """Report what is kept between ticks: counts, commit latencies, the profile
        count, the event loop's pauses."""
        decisions, offers, responses = self._decisions, self._offers, self._responses
        self._decisions, self._offers, self._responses = {}, {}, {}
        for (channel, kind), n in decisions.items():
            self.m.decisions.inc(n, {"channel": channel, "kind": kind})
        for (channel, offer), n in offers.items():
            self.m.offers.inc(n, {"channel": channel, "offer": offer})
        for (outcome, offer), n in responses.items():
            self.m.responses.inc(n, {"outcome": outcome, "offer": offer})
        if self._events:
            self.m.events.inc(self._events, self.shard)
            self._events = 0
        commits, self._commits = self._commits, []
        for seconds in commits:
            self.m.commit.observe(seconds, self.shard)
        self.m.profiles.set(profiles, self.shard)
        for seconds in pauses:
            self.m.pauses.observe(seconds, self.shard)

    def model_update(self, kind: str) -> None:
        self.m.model_updates.inc(1, {**self.shard, "kind": kind})


class IngressMetrics:
    """What an ingress replica reports: the fallback answers only it gives."""

    def __init__(self) -> None:
        self.m = _Metrics.get()
        self._labels = Labels(None)

    def fallback(self, channel: str, catalog: Catalog) -> None:
        if self._labels.catalog is not catalog:
            self._labels = Labels(catalog)
        self.m.decisions.inc(1, {"channel": self._labels.channel(channel), "kind": "fallback"})
