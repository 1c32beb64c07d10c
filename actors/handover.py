"""``Handover``: profiles leaving a shard (merged into another) and arriving.

When identities are linked, an absorbed profile is handed over to the
surviving profile's shard. This is a small saga whose durable intent is the
absorbed profile's shard's journal record :class:`ProfileMovedOut`:

1. **Decide** (compare-and-set): the first hand-over of a profile wins. The
   old owner journals :class:`ProfileMovedOut` (with the profile's bytes),
   deletes the profile and keeps a tombstone ``absorbed → survivor``; later
   calls for the absorbed id are answered :class:`~actors.replies.Moved`. A
   second hand-over to *another* survivor is refused with ``Moved`` (the
   caller re-plans: it lost the race); one to the same survivor resumes.
2. **Deliver**: the bytes (and the absorbed customer's logged decisions, so
   later responses to them still teach the models) are pushed to the
   survivor's shard, which merges them idempotently
   (:class:`ProfileMergedIn`); then :class:`MoveDelivered`.
3. **Repoint**: every identity shard moves the absorbed profile's
   identifiers to the survivor (idempotent); then :class:`IdentifiersRepointed`.

Steps 2 and 3 run at once when they can, and otherwise are retried by the
shard's timer until done, after a crash too (the intent is in the journal).
A merge is never rolled back once step 1 is durable.
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
    # The absorbed customer's logged decisions (journal forms): they go with the
    # profile, so responses to them reach the survivor's shard and its models.
    decisions: list | None = None


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
    decisions: list | None = None  # as in ProfileMovedOut, re-keyed to the survivor


@journal_record("repointed")
@dataclass(frozen=True, slots=True)
class IdentifiersRepointed(JournalRecord):
    absorbed: str


@journal_record("unmove")
@dataclass(frozen=True, slots=True)
class MovesForgotten(JournalRecord):
    customer_id: str


@dataclass(frozen=True, slots=True)
class HandedOver:
    """Answer to a hand-over: where the profile went, and which steps are done."""

    to: str
    delivered: bool  # the profile's data is merged into the survivor
    repointed: bool  # its identifiers name the survivor

    @property
    def complete(self) -> bool:
        return self.delivered and self.repointed


# (survivor, absorbed, blob, decisions) -> the survivor shard's answer: True, Moved or a refusal
Deliver = Callable[[str, str, bytes, list | None], Awaitable[Any]]
# (absorbed, survivor) -> True once every identity shard repointed
Repoint = Callable[[str, str], Awaitable[bool]]


class Handover:
    """Tombstones and pending deliveries of one shard."""

    def __init__(self, session_gap_s: float) -> None:
        self.session_gap_s = session_gap_s
        self.moved: dict[str, str] = {}  # merged-away profile -> the profile it went to
        # absorbed -> [survivor, blob, decisions] not yet delivered
        self.pending: dict[str, list] = {}
        self.unrepointed: dict[str, str] = {}  # absorbed -> survivor, identifiers not yet moved

    def reset(self) -> None:
        self.moved, self.pending, self.unrepointed = {}, {}, {}

    def load_snapshot(self, state: dict) -> None:
        self.moved.update(state.get("moved", {}))
        self.pending.update(state.get("pending_moves", {}))
        self.unrepointed.update(state.get("unrepointed", {}))

    def snapshot(self) -> dict[str, Any]:
        return {
            "moved": dict(self.moved),
            "pending_moves": dict(self.pending),
            "unrepointed": dict(self.unrepointed),
        }

    def state_of(self, absorbed: str) -> HandedOver | None:
        to = self.moved.get(absorbed)
        if to is None:
            return None
        return HandedOver(to, absorbed not in self.pending, absorbed not in self.unrepointed)

    def moved_to(self, customer_id: str) -> Moved | None:
        to = self.moved.get(customer_id)
        return None if to is None else Moved(to)

    # -- applying records (live and on replay) ----------------------------------------

    def move_out(self, store: ProfileStore, rec: ProfileMovedOut) -> None:
        store.delete(rec.absorbed)
        self.moved[rec.absorbed] = rec.survivor
        self.unrepointed[rec.absorbed] = rec.survivor
        if rec.blob:
            self.pending[rec.absorbed] = [rec.survivor, rec.blob, rec.decisions]

    def delivered(self, rec: MoveDelivered) -> None:
        self.pending.pop(rec.absorbed, None)

    def repointed(self, rec: IdentifiersRepointed) -> None:
        self.unrepointed.pop(rec.absorbed, None)

    def merge_in(self, store: ProfileStore, rec: ProfileMergedIn) -> None:
        p = store.get_or_new(rec.survivor)
        absorbed = Profile.unpack(rec.absorbed, rec.blob)
        merge_profiles(p, absorbed, rec.now, self.session_gap_s)
        store.put(p)

    def forget(self, rec: MovesForgotten) -> list[str]:
        """Drop tombstones from or to an erased customer; return the absorbed ids they named."""
        doomed = [a for a, s in self.moved.items() if rec.customer_id in (a, s)]
        for a in doomed:
            del self.moved[a]
            self.pending.pop(a, None)
            self.unrepointed.pop(a, None)
        return doomed

    # -- delivery ---------------------------------------------------------------------

    async def deliver(self, absorbed: str, durable: DurableState, send: Deliver) -> bool:
        """Push a pending hand-over to the survivor's shard; True once merged there."""
        pending = self.pending.get(absorbed)
        if pending is None:
            return True
        survivor, blob = pending[0], pending[1]
        decisions = pending[2] if len(pending) > 2 else None  # snapshots before decisions
        for _ in range(MAX_CHAIN):
            try:
                result = await send(survivor, absorbed, blob, decisions)
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

    async def repoint(self, absorbed: str, durable: DurableState, repoint: Repoint) -> bool:
        """Move the absorbed profile's identifiers to the survivor; True once done."""
        survivor = self.unrepointed.get(absorbed)
        if survivor is None:
            return True
        try:
            done = await repoint(absorbed, survivor)
        except Exception as exc:  # an identity shard is restarting
            log.warning("repoint of %s to %s failed (%s)", absorbed, survivor, exc)
            return False
        if not done:
            return False
        rec = IdentifiersRepointed(absorbed)
        self.repointed(rec)
        await durable.record(rec)
        return True
