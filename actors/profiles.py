"""``ProfileBook``: a shard's profiles, the events that update them, and erasure.

It wraps the packed :class:`~models.customer.store.ProfileStore` with what the
shard journals: :class:`EventsApplied` (a batch, as applied, packed once by the
ingress) and :class:`ProfileErased`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from actors.durable import JournalRecord, journal_record
from models.customer.events import Event
from models.customer.profile import Profile
from models.customer.store import ProfileStore


@journal_record("ev")
@dataclass(frozen=True, slots=True)
class EventsApplied(JournalRecord):
    now: float
    events: bytes | list  # msgpack-packed list of Event field lists, or the lists


@journal_record("del")
@dataclass(frozen=True, slots=True)
class ProfileErased(JournalRecord):
    customer_id: str


def unpack_events(events: bytes | list) -> list[Event]:
    if isinstance(events, bytes):
        events = msgpack.unpackb(events, raw=False)
    return [Event(*e) for e in events]


def pack_events(events: list[Event]) -> bytes:
    """One msgpack blob per batch: cheaper to send and journal than Event objects."""
    return msgpack.packb([list(ev) for ev in events], use_bin_type=True)


class ProfileBook:
    """The profiles of one shard (packed in memory) and their counters."""

    def __init__(self, session_gap_s: float) -> None:
        self.session_gap_s = session_gap_s
        self.store = ProfileStore(session_gap_s)
        self.events_applied = 0
        self.duplicates = 0

    def reset(self) -> None:
        self.store = ProfileStore(self.session_gap_s)

    def load_snapshot(self, state: dict) -> None:
        for cid, blob in state["profiles"].items():
            self.store.put_blob(cid, blob)

    def snapshot(self) -> dict[str, Any]:
        return {"profiles": dict(self.store.items())}

    def apply(
        self, events: list[Event], now: float, attribute: Callable[[Event], Event]
    ) -> tuple[int, int]:
        """Apply in order (duplicates skipped); return (applied, duplicates)."""
        applied, dups = self.store.apply_events(events, now, attribute)
        self.events_applied += applied
        self.duplicates += dups
        return applied, dups

    def replay(self, rec: EventsApplied, attribute: Callable[[Event], Event]) -> None:
        self.store.apply_events(unpack_events(rec.events), rec.now, attribute)

    def get_or_new(self, customer_id: str) -> Profile:
        return self.store.get_or_new(customer_id)

    def view(self, customer_id: str) -> dict[str, Any] | None:
        """The API view of a profile, or None."""
        p = self.store.get(customer_id)
        return None if p is None else p.to_dict(time.time(), self.session_gap_s)

    def erase(self, customer_id: str) -> bool:
        return self.store.delete(customer_id)
