"""``Handover``: profiles leaving a shard (merged into another) and arriving.

When identities are linked, an absorbed profile is handed over to the
surviving profile's shard. The old owner journals :class:`ProfileMovedOut`
(with the profile's bytes) before it answers, deletes the profile and keeps a
tombstone ``absorbed → survivor``: later calls for the absorbed id are answered
:class:`~actors.replies.Moved` and follow it. The bytes are then pushed to the
survivor's shard, which merges them idempotently (:class:`ProfileMergedIn`);
once that is acknowledged the old owner journals :class:`MoveDelivered`. A
push that failed (survivor's shard restarting) is retried by the shard's timer,
after a crash too, since the pending hand-over is in the journal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from actors.durable import DurableState, JournalRecord, journal_record
from actors.replies import Moved
from models.customer.merge import merge_profiles
from models.customer.profile import Profile
from models.customer.store import ProfileStore

log = logging.getLogger("rtim.handover")

MAX_CHAIN = 8  # follow at most this many merges of merges when delivering


@journal_record("move")
@dataclass(frozen=True, slots=True)
class ProfileMovedOut(JournalRecord):
    absorbed: str
    survivor: str
    blob: bytes | None  # None: there was no profile to hand over, only a tombstone


@journal_record("moved_ack")
@dataclass(frozen=True, slots=True)
class MoveDelivered(JournalRecord):
    absorbed: str


@journal_record("merge")
@dataclass(frozen=True, slots=True)
class ProfileMergedIn(JournalRecord):
    survivor: str
    absorbed: str
    blob: bytes
    now: float


@journal_record("unmove")
@dataclass(frozen=True, slots=True)
class MovesForgotten(JournalRecord):
    customer_id: str


@dataclass(frozen=True, slots=True)
class HandedOver:
    """Answer to a hand-over: where the profile went, and whether it arrived."""

    to: str
    delivered: bool


# (survivor, absorbed, blob) -> the survivor shard's answer: True, Moved or a refusal
Deliver = Callable[[str, str, bytes], Awaitable[Any]]


class Handover:
    """Tombstones and pending deliveries of one shard."""

    def __init__(self, session_gap_s: float) -> None:
        self.session_gap_s = session_gap_s
        self.moved: dict[str, str] = {}  # merged-away profile -> the profile it went to
        self.pending: dict[str, list] = {}  # absorbed -> [survivor, blob] not yet delivered

    def reset(self) -> None:
        self.moved, self.pending = {}, {}

    def load_snapshot(self, state: dict) -> None:
        self.moved.update(state.get("moved", {}))
        self.pending.update(state.get("pending_moves", {}))

    def snapshot(self) -> dict[str, Any]:
        return {"moved": dict(self.moved), "pending_moves": dict(self.pending)}

    def moved_to(self, customer_id: str) -> Moved | None:
        to = self.moved.get(customer_id)
        return None if to is None else Moved(to)

    # -- applying records (live and on replay) ----------------------------------------

    def move_out(self, store: ProfileStore, rec: ProfileMovedOut) -> None:
        store.delete(rec.absorbed)
        self.moved[rec.absorbed] = rec.survivor
        if rec.blob:
            self.pending[rec.absorbed] = [rec.survivor, rec.blob]

    def delivered(self, rec: MoveDelivered) -> None:
        self.pending.pop(rec.absorbed, None)

    def merge_in(self, store: ProfileStore, rec: ProfileMergedIn) -> None:
        p = store.get_or_new(rec.survivor)
        absorbed = Profile.unpack(rec.absorbed, rec.blob)
        merge_profiles(p, absorbed, rec.now, self.session_gap_s)
        store.put(p)

    def forget(self, rec: MovesForgotten) -> int:
        """Drop tombstones from or to an erased customer."""
        doomed = [a for a, s in self.moved.items() if rec.customer_id in (a, s)]
        for a in doomed:
            del self.moved[a]
            self.pending.pop(a, None)
        return len(doomed)

    # -- delivery ---------------------------------------------------------------------

    async def deliver(self, absorbed: str, durable: DurableState, send: Deliver) -> bool:
        """Push a pending hand-over to the survivor's shard; True once merged there."""
        pending = self.pending.get(absorbed)
        if pending is None:
            return True
        survivor, blob = pending
        for _ in range(MAX_CHAIN):
            try:
                result = await send(survivor, absorbed, blob)
            except Exception as exc:  # the survivor's shard is restarting
                log.warning("delivery of %s to %s failed (%s)", absorbed, survivor, exc)
                return False
            if isinstance(result, Moved):  # the survivor was merged on: follow it
                survivor = result.to
                continue
            if result is not True:
                return False
            rec = MoveDelivered(absorbed)
            self.delivered(rec)
            await durable.record(rec)
            return True
        return False
