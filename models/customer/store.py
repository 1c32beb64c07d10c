"""The in-memory profile store of one shard: customer id → packed profile.

Profiles rest as msgpack blobs (a few hundred bytes each, no per-field Python
objects) and are unpacked only while an event batch or a decision touches
them. The store is plain Python so it can be unit-tested and benchmarked
without Ray; :class:`actors.shard.ProfileShard` owns one and adds
concurrency, ownership checks and durability around it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

from models.customer.events import Event
from models.customer.profile import Profile, event_digest


class ProfileStore:
    """Packed profiles keyed by customer id."""

    def __init__(self, session_gap_s: float = 1800.0) -> None:
        if session_gap_s <= 0:
            raise ValueError("session_gap_s must be > 0")
        self.session_gap_s = session_gap_s
        self._blobs: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self._blobs

    def ids(self) -> Iterator[str]:
        return iter(list(self._blobs))

    def get(self, customer_id: str) -> Profile | None:
        blob = self._blobs.get(customer_id)
        return None if blob is None else Profile.unpack(customer_id, blob)

    def get_or_new(self, customer_id: str) -> Profile:
        blob = self._blobs.get(customer_id)
        return Profile(customer_id) if blob is None else Profile.unpack(customer_id, blob)

    def put(self, profile: Profile) -> None:
        self._blobs[profile.customer_id] = profile.pack()

    def put_blob(self, customer_id: str, blob: bytes) -> None:
        self._blobs[customer_id] = blob

    def blob(self, customer_id: str) -> bytes | None:
        return self._blobs.get(customer_id)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return list(self._blobs.items())

    def copy(self) -> dict[str, bytes]:
        """Every customer id and blob, as a new dict (one C-level copy: cheap)."""
        return self._blobs.copy()

    def delete(self, customer_id: str) -> bool:
        return self._blobs.pop(customer_id, None) is not None

    def apply_events(
        self,
        events: Iterable[Event],
        now: float,
        resolve: Callable[[Event], Event] | None = None,
    ) -> tuple[int, int]:
        """Apply events in order; return (applied, duplicates).

        ``resolve`` sees each non-duplicate event before it is applied and may
        return a completed copy (the shard uses it to attribute responses to
        logged decisions). Each touched profile is unpacked and packed once.
        """
        touched: dict[str, Profile] = {}
        applied = duplicates = 0
        gap = self.session_gap_s
        for ev in events:
            p = touched.get(ev.customer_id)
            if p is None:
                p = touched[ev.customer_id] = self.get_or_new(ev.customer_id)
            digest = event_digest(ev.event_id)
            if p.seen_digest(digest, now):
                duplicates += 1
                continue
            if resolve is not None:
                ev = resolve(ev)
            p.apply_unseen(ev, digest, now, gap)
            applied += 1
        for p in touched.values():
            self.put(p)
        return applied, duplicates

    def memory_bytes(self) -> int:
        """Approximate bytes held by keys, blobs and the dict's slots."""
        total = sys.getsizeof(self._blobs)
        for k, v in self._blobs.items():
            total += sys.getsizeof(k) + sys.getsizeof(v)
        return total
