"""``ReportBook``: a shard's report counters, kept as it decides and learns outcomes.

The counters (:class:`~models.reporting.counters.ReportCounters`) need no
journal record for decisions and responses: they are a pure function of the
journalled decisions (``DecisionsMade``) and events (``EventsApplied``), so
recovery re-counts exactly the records after the snapshot, which holds the
counters as they were at its LSN: nothing is counted twice or lost. Fallback
counts come from the ingress (:class:`FallbacksCounted`, journalled).

Partition moves do not carry counters: each shard keeps what it counted and
reports merge every shard's counters on read, so a move loses nothing. A
response to a decision that moved with its partition counts on the new owner,
in the decision's bucket; the sum is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from actors.durable import JournalRecord, journal_record
from models.decisioning.catalog import Catalog
from models.decisioning.record import DecisionRecord
from models.learning.adaptive import DEFAULT_POSITIVE
from models.reporting.counters import ReportCounters

DEFAULT_POSITIVE_SET = frozenset(DEFAULT_POSITIVE)


@journal_record("rfall")
@dataclass(frozen=True, slots=True)
class FallbacksCounted(JournalRecord):
    batch_id: str  # the replica's batch id: a batch retried after a lost answer counts once
    rows: list[list]  # [hour, channel, offer or None, n]


class ReportBook:
    """Counts decisions, outcomes and fallbacks into hourly report counters."""

    SEEN_BATCHES = 1024  # fallback batch ids remembered for de-duplication

    def __init__(self, retention_h: int) -> None:
        self.retention_h = retention_h
        self.counters = ReportCounters(retention_h)
        self.seen: dict[str, None] = {}

    def reset(self) -> None:
        self.counters = ReportCounters(self.retention_h)
        self.seen = {}

    def load_snapshot(self, state: dict) -> None:
        self.counters.merge(state.get("reports", {}))
        self.seen = dict.fromkeys(state.get("report_batches", []))

    def snapshot(self) -> dict[str, Any]:
        return {"reports": self.counters.state(), "report_batches": list(self.seen)}

    @staticmethod
    def _costs(catalog: Catalog) -> dict[str, float]:
        return {name: ch.cost for name, ch in catalog.channels.items()}

    @staticmethod
    def positive(catalog: Catalog) -> frozenset[str]:
        return catalog.learning.positive if catalog.learning is not None else DEFAULT_POSITIVE_SET

    def decided(self, records: list[DecisionRecord], catalog: Catalog) -> None:
        costs = self._costs(catalog)
        for r in records:
            self.counters.count_decision(r, costs)

    def attributed(self, record: DecisionRecord, outcomes_before: int, catalog: Catalog) -> None:
        """Count the outcome :meth:`DecisionRecord.attribute` just appended (if it did)."""
        if len(record.outcomes) > outcomes_before:
            self.counters.count_outcome(record, self.positive(catalog))

    def fallbacks(self, rec: FallbacksCounted) -> bool:
        """Count a replica's fallback batch once; False if it was counted already."""
        if rec.batch_id in self.seen:
            return False
        self.seen[rec.batch_id] = None
        while len(self.seen) > self.SEEN_BATCHES:
            del self.seen[next(iter(self.seen))]
        self.counters.count_fallbacks(rec.rows)
        return True

    def prune(self) -> None:
        self.counters.prune(time.time())

    def query(self, since: float, until: float) -> dict[str, list]:
        return self.counters.state(since, until)
