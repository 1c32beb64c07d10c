"""The decision log: what was decided, with which scores, and what came of it.

Each shard keeps the newest ``capacity`` entries in memory (persisted through
the shard's journal and snapshots). An entry records the decision id, the
customer, the time, the channels, the catalogue and model versions, every
scored candidate, the chosen offers with the probability with which each was
chosen, and the outcomes attributed to it later by ``response`` events.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_OUTCOMES = 16


class DecisionLog:
    """Bounded, insertion-ordered log of decisions, by decision id."""

    def __init__(self, capacity: int = 10000) -> None:
        if capacity < 1:
            raise ValueError("decision log capacity must be >= 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: dict[str, Any]) -> None:
        self._entries[entry["decision_id"]] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, decision_id: str) -> dict[str, Any] | None:
        return self._entries.get(decision_id)

    def attribute(
        self, decision_id: str, customer_id: str, offer_id: str | None, outcome: str, ts: float
    ) -> str | None:
        """Attach an outcome to a logged decision; return the offer it concerns.

        ``offer_id`` defaults to the decision's first chosen offer. Returns
        None when the decision is unknown (evicted, or another customer's).
        """
        entry = self._entries.get(decision_id)
        if entry is None or entry["customer_id"] != customer_id:
            return None
        chosen = [c["offer_id"] for c in entry["chosen"]]
        if offer_id is None:
            if not chosen:
                return None
            offer_id = chosen[0]
        outcomes = entry.setdefault("outcomes", [])
        if len(outcomes) < MAX_OUTCOMES:
            outcomes.append({"offer_id": offer_id, "outcome": outcome, "ts": ts})
        return offer_id

    def for_customer(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        out = [e for e in reversed(self._entries.values()) if e["customer_id"] == customer_id]
        return out[:limit]

    def erase(self, customer_id: str) -> int:
        """Forget every entry of a customer (right to erasure)."""
        doomed = [k for k, e in self._entries.items() if e["customer_id"] == customer_id]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries.values())

    def load(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            self.add(e)
