"""The decision log: the newest decisions of one shard, by decision id.

Each shard keeps the newest ``capacity`` :class:`DecisionRecord` objects in
memory (persisted through the shard's journal and snapshots). Responses are
attributed to them; ``GET /v1/decisions/{id}`` shows their log entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from models.decisioning.record import DecisionRecord, to_builtins


class DecisionLog:
    """Bounded, insertion-ordered log of decisions."""

    def __init__(self, capacity: int = 10000) -> None:
        if capacity < 1:
            raise ValueError("decision log capacity must be >= 1")
        self.capacity = capacity
        self._records: OrderedDict[str, DecisionRecord] = OrderedDict()
        self._keyed: dict[tuple[str, str], str] = {}  # (customer, idempotency key) -> id

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: DecisionRecord) -> None:
        self._records[record.decision_id] = record
        if record.request_key is not None:
            self._keyed[(record.customer_id, record.request_key)] = record.decision_id
        while len(self._records) > self.capacity:
            self._forget(self._records.popitem(last=False)[1])

    def _forget(self, record: DecisionRecord) -> None:
        if record.request_key is not None:
            self._keyed.pop((record.customer_id, record.request_key), None)

    def keyed(self, customer_id: str, key: str) -> DecisionRecord | None:
        """The decision already made for this customer and idempotency key, if logged."""
        decision_id = self._keyed.get((customer_id, key))
        return None if decision_id is None else self._records.get(decision_id)

    def get(self, decision_id: str) -> DecisionRecord | None:
        return self._records.get(decision_id)

    def attribute(
        self, decision_id: str, customer_id: str, offer_id: str | None, outcome: str, ts: float
    ) -> str | None:
        """Attach an outcome to a logged decision; return the offer it concerns.

        ``offer_id`` defaults to the decision's first chosen offer. Returns
        None when the decision is unknown (evicted, or another customer's).
        """
        record = self._records.get(decision_id)
        if record is None or record.customer_id != customer_id:
            return None
        return record.attribute(offer_id, outcome, ts)

    def for_customer(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The customer's log entries, newest first."""
        out = [r for r in reversed(self._records.values()) if r.customer_id == customer_id]
        return [r.log_entry() for r in out[:limit]]

    def erase(self, customer_id: str) -> int:
        """Forget every decision of a customer (right to erasure)."""
        doomed = [k for k, r in self._records.items() if r.customer_id == customer_id]
        for k in doomed:
            self._forget(self._records.pop(k))
        return len(doomed)

    def records(self) -> list[DecisionRecord]:
        return list(self._records.values())

    def captured(self) -> Callable[[], list[bytes]]:
        """The log as of now, in its journal form, packed when the result is called.

        Capturing is cheap (a reference and two lengths per record), so a
        snapshot can pack the records later in a thread while decisions go on.
        Each item is one record's msgpack (what :func:`to_builtins` gives,
        packed). A logged record changes only by appending to ``outcomes`` and
        ``learned``; what was appended after the capture is cut off again, so
        the result is the log as it was (records added or evicted since do not
        matter: the capture holds its own references). Packing makes no
        container objects, so it gives the garbage collector nothing to do.
        """
        marks = [(r, len(r.outcomes), len(r.learned)) for r in self._records.values()]

        def build() -> list[bytes]:
            encode = msgspec.msgpack.Encoder().encode
            out = []
            for record, outcomes, learned in marks:
                if (
                    record.trace is None
                    and len(record.outcomes) == outcomes
                    and len(record.learned) == learned
                ):
                    out.append(encode(record))
                else:
                    data = to_builtins(record)
                    del data["outcomes"][outcomes:]
                    del data["learned"][learned:]
                    out.append(encode(data))
            return out

        return build
