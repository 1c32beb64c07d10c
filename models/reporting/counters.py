"""``ReportCounters``: the report aggregates of one shard, kept as sums per hour.

Every counter is a sum, so the counters of all shards (and of all hours in a
range) add up in any order: reports merge them on read
(:meth:`ReportCounters.merge`). Four tables, each keyed by the hourly bucket
(unix seconds of the hour's start) first:

- ``cells``: (hour, experiment, arm, channel, offer or None) → decisions,
  impressions, positives, value, cost, responses by outcome. ``offer`` None is
  "no message" (counted once under each requested channel);
- ``arms``: (hour, experiment, arm) → policy, decisions, positive decisions,
  value, value² (per-decision sums, for the confidence intervals of lift);
- ``auc``: (hour, model key ``offer@channel``) → per propensity bin, decisions
  and the positive ones, for ROC AUC over time;
- ``fallbacks``: (hour, channel, offer or None) → fallback answers of the ingress.

Responses count in the bucket of the decision they are attributed to, so a
late response raises that hour's success rate instead of a later hour's.
A decision is *positive* for an offer on its first positive outcome for that
offer; its realised value is the sum of the values of its positive offers.
Buckets older than ``retention_h`` hours are dropped (:meth:`prune`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from models.decisioning.record import DecisionRecord

HOUR_S = 3600
AUC_BINS = 20

# Indexes into a cell's list.
DECISIONS, IMPRESSIONS, POSITIVES, VALUE, COST, RESPONSES = range(6)
# Indexes into an arm's list.
A_POLICY, A_DECISIONS, A_POSITIVES, A_VALUE, A_VALUE_SQ = range(5)

CellKey = tuple[int, str | None, str | None, str, str | None]
ArmKey = tuple[int, str | None, str | None]


def bucket_of(ts: float) -> int:
    """The start of the hour ``ts`` falls in."""
    return int(ts // HOUR_S) * HOUR_S


def _bin(p: float) -> int:
    return min(AUC_BINS - 1, max(0, int(p * AUC_BINS)))


def _realised(record: DecisionRecord, positive: frozenset[str], upto: int) -> tuple[set, float]:
    """Offers of ``record`` with a positive among its first ``upto`` outcomes, and their value."""
    won = {o.offer_id for o in record.outcomes[:upto] if o.outcome in positive}
    value = sum(o.value or 0.0 for o in record.offers if o.offer_id in won)
    return won, value


class ReportCounters:
    """One shard's report aggregates (see the module docstring)."""

    def __init__(self, retention_h: int = 24 * 31) -> None:
        if retention_h < 1:
            raise ValueError("report retention must be at least one hour")
        self.retention_h = retention_h
        self.cells: dict[CellKey, list] = {}
        self.arms: dict[ArmKey, list] = {}
        self.auc: dict[tuple[int, str], list[list[float]]] = {}
        self.fallbacks: dict[tuple[int, str, str | None], int] = {}
        self._newest = 0  # newest bucket seen: pruning runs when it changes

    # -- counting ---------------------------------------------------------------------

    def _cell(self, key: CellKey) -> list:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0, 0, 0, 0.0, 0.0, {}]
        return cell

    def count_decision(self, record: DecisionRecord, costs: dict[str, float]) -> None:
        """Count one decision made by a shard (``costs``: channel → cost per contact)."""
        hour = bucket_of(record.ts)
        if hour != self._newest:
            self._advance(hour)
        exp, arm = record.experiment, record.arm
        akey = (hour, exp, arm)
        a = self.arms.get(akey)
        if a is None:
            a = self.arms[akey] = [record.policy, 0, 0, 0.0, 0.0]
        a[A_DECISIONS] += 1
        if not record.offers:
            for ch in record.channels:
                self._cell((hour, exp, arm, ch, None))[DECISIONS] += 1
            return
        impressions = 1 if record.impressions else 0
        for o in record.offers:
            cell = self._cell((hour, exp, arm, o.channel, o.offer_id))
            cell[DECISIONS] += 1
            cell[IMPRESSIONS] += impressions
            cell[COST] += costs.get(o.channel, 0.0)
            if o.propensity is not None:
                self._auc((hour, f"{o.offer_id}@{o.channel}"))[0][_bin(o.propensity)] += 1

    def _auc(self, key: tuple[int, str]) -> list[list[float]]:
        hist = self.auc.get(key)
        if hist is None:
            hist = self.auc[key] = [[0.0] * AUC_BINS, [0.0] * AUC_BINS]  # decisions, positives
        return hist

    def count_outcome(self, record: DecisionRecord, positive: frozenset[str]) -> None:
        """Count the outcome just attributed to ``record`` (its last one).

        Called after :meth:`DecisionRecord.attribute` appended it; an outcome
        naming an offer the decision did not choose is not counted.
        """
        if not record.outcomes:
            return
        n = len(record.outcomes)
        out = record.outcomes[-1]
        chosen = next((o for o in record.offers if o.offer_id == out.offer_id), None)
        if chosen is None and (record.offers or out.offer_id is not None):
            return
        hour = bucket_of(record.ts)
        exp, arm = record.experiment, record.arm
        channels = [chosen.channel] if chosen is not None else record.channels
        is_positive = out.outcome in positive
        won, before = _realised(record, positive, n - 1)
        first = is_positive and out.offer_id not in won
        for ch in channels:
            cell = self._cell((hour, exp, arm, ch, out.offer_id))
            cell[RESPONSES][out.outcome] = cell[RESPONSES].get(out.outcome, 0) + 1
            if first:
                cell[POSITIVES] += 1
                if chosen is not None:
                    cell[VALUE] += chosen.value or 0.0
        if not first:
            return
        a = self.arms.get((hour, exp, arm))
        if a is None:  # the decision's bucket was pruned, or counted on another shard
            return
        if not won:  # the decision's first positive outcome
            a[A_POSITIVES] += 1
        if chosen is not None and chosen.value:
            after = before + chosen.value
            a[A_VALUE] += chosen.value
            a[A_VALUE_SQ] += after * after - before * before
        if chosen is not None and chosen.propensity is not None:
            self._auc((hour, f"{chosen.offer_id}@{chosen.channel}"))[1][
                _bin(chosen.propensity)
            ] += 1

    def count_fallbacks(self, rows: Iterable[list]) -> None:
        """Add ``[hour, channel, offer or None, n]`` rows counted by an ingress replica."""
        for hour, channel, offer, n in rows:
            key = (int(hour), str(channel), offer)
            self.fallbacks[key] = self.fallbacks.get(key, 0) + int(n)

    # -- retention --------------------------------------------------------------------

    def _advance(self, hour: int) -> None:
        if hour > self._newest:
            self._newest = hour
            self.prune(hour)

    def prune(self, now: float) -> int:
        """Drop the buckets older than the retention; the number of entries dropped."""
        oldest = bucket_of(now) - (self.retention_h - 1) * HOUR_S
        dropped = 0
        for table in (self.cells, self.arms, self.auc, self.fallbacks):
            old = [k for k in table if k[0] < oldest]
            for k in old:
                del table[k]
            dropped += len(old)
        return dropped

    def __len__(self) -> int:
        return len(self.cells) + len(self.arms) + len(self.auc) + len(self.fallbacks)

    # -- state and merging ------------------------------------------------------------

    def state(self, since: float | None = None, until: float | None = None) -> dict[str, list]:
        """Plain msgpack-able rows (snapshots, and the answer of a report query).

        With ``since``/``until``, only the buckets overlapping that range.
        """
        lo = bucket_of(since) if since is not None else None
        hi = until

        def keep(hour: int) -> bool:
            return (lo is None or hour >= lo) and (hi is None or hour < hi)

        return {
            "cells": [[*k, *v[:5], dict(v[5])] for k, v in self.cells.items() if keep(k[0])],
            "arms": [[*k, *v] for k, v in self.arms.items() if keep(k[0])],
            "auc": [[*k, list(h[0]), list(h[1])] for k, h in self.auc.items() if keep(k[0])],
            "fallbacks": [[*k, n] for k, n in self.fallbacks.items() if keep(k[0])],
        }

    def merge(self, state: dict[str, Any]) -> None:
        """Add another counter set's :meth:`state` (order-free; also loads a snapshot)."""
        for hour, exp, arm, ch, offer, d, i, p, v, c, responses in state.get("cells", []):
            cell = self._cell((hour, exp, arm, ch, offer))
            cell[DECISIONS] += d
            cell[IMPRESSIONS] += i
            cell[POSITIVES] += p
            cell[VALUE] += v
            cell[COST] += c
            for k, n in responses.items():
                cell[RESPONSES][k] = cell[RESPONSES].get(k, 0) + n
        for hour, exp, arm, policy, d, p, v, vsq in state.get("arms", []):
            a = self.arms.get((hour, exp, arm))
            if a is None:
                a = self.arms[(hour, exp, arm)] = [policy, 0, 0, 0.0, 0.0]
            a[A_DECISIONS] += d
            a[A_POSITIVES] += p
            a[A_VALUE] += v
            a[A_VALUE_SQ] += vsq
        for hour, key, decided, won in state.get("auc", []):
            hist = self._auc((hour, key))
            for j in range(min(AUC_BINS, len(decided))):
                hist[0][j] += decided[j]
                hist[1][j] += won[j]
        self.count_fallbacks(state.get("fallbacks", []))
        hours = [k[0] for k in self.arms] + [k[0] for k in self.cells]
        self._newest = max([self._newest, *hours])

    @classmethod
    def merged(cls, states: Iterable[dict[str, Any]], retention_h: int = 24 * 31) -> ReportCounters:
        out = cls(retention_h)
        for s in states:
            out.merge(s)
        return out
