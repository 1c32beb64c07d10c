"""``ProfileBook``: a shard's profiles, the events that update them, and erasure.

It wraps the packed :class:`~models.customer.store.ProfileStore` with what the
shard journals: :class:`EventsApplied` (a batch, as applied, packed once by the
ingress) and :class:`ProfileErased`.

An erased profile leaves an *erasure tombstone* for ``tombstone_s``: a request
that reached it through an ingress replica's cached identifier lookup is
answered ``Erased`` (the replica resolves the identifiers again) instead of
silently recreating the profile. Replicas trust cached lookups for less time
than that (``identity_cache_ttl_s``), so no stale cache entry outlives the
tombstone that catches it. A tombstone holds a keyed hash of the erased id,
never the id itself, so no file names an erased customer once a snapshot has
compacted the journal.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from actors.durable import JournalRecord, journal_record
from actors.journal import Piecewise
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
    ts: float = 0.0  # when; the erasure tombstone is kept for a while after it


def unpack_events(events: bytes | list) -> list[Event]:
    if isinstance(events, bytes):
        events = msgpack.unpackb(events, raw=False)
    return [Event(*e) for e in events]


def pack_events(events: list[Event]) -> bytes:
    """One msgpack blob per batch: cheaper to send and journal than Event objects."""
    return msgpack.packb([list(ev) for ev in events], use_bin_type=True)


_EMPTY_PACKED = Profile("").pack()  # a new profile's packed form (the id is not in it)


class ProfileBook:
    """The profiles of one shard (packed in memory) and their counters."""

    def __init__(self, session_gap_s: float, tombstone_s: float = 600.0) -> None:
        self.session_gap_s = session_gap_s
        self.tombstone_s = tombstone_s
        self.store = ProfileStore(session_gap_s)
        self.erased: dict[str, float] = {}  # keyed hash of an erased profile id -> when
        self._salt = os.urandom(16)
        self.events_applied = 0
        self.duplicates = 0

    def reset(self) -> None:
        self.store = ProfileStore(self.session_gap_s)
        self.erased = {}

    def load_snapshot(self, state: dict) -> None:
        for cid, blob in state["profiles"].items():
            self.store.put_blob(cid, blob)
        if state.get("erased_salt"):
            self._salt = state["erased_salt"]
            self.erased.update(state.get("erased", {}))

    def snapshot(self) -> dict[str, Any]:
        self.prune(time.time())
        return {
            "profiles": Piecewise(self.store.copy()),  # packed in the writer's thread
            "erased": dict(self.erased),
            "erased_salt": self._salt,
        }

    def _tomb(self, customer_id: str) -> str:
        return self.tomb_with(self._salt, customer_id)

    @property
    def salt(self) -> bytes:
        """The key of this shard's tombstone hashes (exported with handed-off partitions)."""
        return self._salt

    @staticmethod
    def tomb_with(salt: bytes, customer_id: str) -> str:
        return hashlib.blake2b(customer_id.encode(), key=salt, digest_size=16).hexdigest()

    def prune(self, now: float) -> None:
        """Drop erasure tombstones older than ``tombstone_s``."""
        cutoff = now - self.tombstone_s
        for tomb in [t for t, ts in self.erased.items() if ts < cutoff]:
            del self.erased[tomb]

    def recently_erased(self, customer_id: str) -> bool:
        if not self.erased:
            return False
        ts = self.erased.get(self._tomb(customer_id))
        return ts is not None and ts >= time.time() - self.tombstone_s

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

    def checkout(self, customer_id: str) -> tuple[Profile, bytes]:
        """The profile (a new one if none is held) and the packed form it was read from."""
        blob = self.store.blob(customer_id)
        if blob is None:
            return Profile(customer_id), _EMPTY_PACKED
        return Profile.unpack(customer_id, blob), blob

    def view(self, customer_id: str) -> dict[str, Any] | None:
        """The API view of a profile, or None."""
        p = self.store.get(customer_id)
        return None if p is None else p.to_dict(time.time(), self.session_gap_s)

    def erase(self, rec: ProfileErased) -> bool:
        if rec.ts:
            self.erased[self._tomb(rec.customer_id)] = rec.ts
        return self.store.delete(rec.customer_id)
