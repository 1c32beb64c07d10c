"""``DurableState``: journal, snapshots, recovery and degraded handling for one shard.

Profile shards and identity shards keep their state in memory and make every
change durable the same way, so they share this component:

- a change is a typed :class:`JournalRecord`; :meth:`DurableState.record`
  appends it and returns once the journal's group commit made it durable;
- on (re)start :meth:`DurableState.recover` loads the newest snapshot and
  replays the records after it through the owner's handler for each record
  type (records are registered by their ``kind``, the tag written to disk);
- snapshots are taken when due (interval, journal size, or soon after an
  erasure, so erased data leaves the disk), and compact the journal;
- a failed write puts the state in *degraded* mode: the owner refuses work
  (``ShardUnavailable``) and a later snapshot heals it once the disk takes
  writes again. Nothing is ever acknowledged that is not on disk.

The owner (the actor) supplies what is specific to it: how to reset its
state, load a snapshot, capture one, and apply each record type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from actors.journal import Journal
from models.errors import RtimError, Unavailable
from models.settings import Settings

log = logging.getLogger("rtim.durable")

ERASURE_SNAPSHOT_DELAY_S = 5.0  # an erasure reaches the disk within about this long


class JournalRecord:
    """Base of the typed journal records; each subclass is a frozen dataclass.

    On disk a record is ``[lsn, kind, *fields]`` (fields in declaration order).
    """

    kind: ClassVar[str]

    def fields(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]  # type: ignore[arg-type]


R = TypeVar("R", bound=type[JournalRecord])
RECORD_TYPES: dict[str, type[JournalRecord]] = {}


def journal_record(kind: str) -> Callable[[R], R]:
    """Register a record type under the tag written to disk (tags never change)."""

    def register(cls: R) -> R:
        if kind in RECORD_TYPES:
            raise ValueError(f"journal record kind {kind!r} is registered twice")
        cls.kind = kind
        RECORD_TYPES[kind] = cls
        return cls

    return register


def decode_record(raw: list) -> JournalRecord | None:
    """The typed record of ``[lsn, kind, *fields]``; None for an unknown kind."""
    cls = RECORD_TYPES.get(raw[1])
    return None if cls is None else cls(*raw[2:])


@journal_record("probe")
@dataclasses.dataclass(frozen=True, slots=True)
class Probe(JournalRecord):
    """Written to test that the disk takes writes again after a failure."""


class DurableOwner(Protocol):
    """What :class:`DurableState` needs from the actor whose state it keeps."""

    def reset_state(self) -> None: ...
    def load_snapshot(self, state: dict) -> None: ...
    def snapshot_state(self) -> dict: ...

    def snapshot_sync(self) -> Callable[[], None] | None:
        """Called right after ``snapshot_state``; what it returns runs in the
        writer's thread before the journal behind the snapshot is deleted (the
        profile shard fsyncs its history files). None: nothing to sync."""
        ...


class DurableState:
    """Keeps one owner's in-memory state durable (see the module docstring)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        settings: Settings,
        owner: DurableOwner,
        handlers: Mapping[type[JournalRecord], Callable[[Any], None]],
    ) -> None:
        self.name = name
        self.settings = settings
        self.owner = owner
        self.handlers = {**handlers, Probe: lambda _r: None}
        self.journal = Journal(directory, settings.fsync, settings.fsync_interval_s)
        self.degraded: str | None = None
        self.recovered = False
        self.recovery: dict[str, Any] = {}
        self.last_snapshot = time.monotonic()
        self.snapshot_task: asyncio.Task | None = None
        self.erasures_pending = 0

    # -- recovery -------------------------------------------------------------------

    def recover(self) -> bool:
        """Rebuild the owner's state from disk; False (and degraded) if unusable."""
        started = time.monotonic()
        self.owner.reset_state()
        replayed = 0
        try:
            state, records = self.journal.recover()
            if state is not None:
                self.owner.load_snapshot(state)
            for raw in records:
                rec = decode_record(raw)
                if rec is None:
                    log.error("%s: skipping journal record of unknown kind %r", self.name, raw[1])
                    continue
                self.handlers[type(rec)](rec)
                replayed += 1
        except OSError as exc:
            self.degraded = f"data directory unusable: {exc.strerror or exc} ({exc.filename})"
            log.error("%s: %s", self.name, self.degraded)
            return False
        self.recovered = True
        self.degraded = None
        self.recovery = {
            "replayed_records": replayed,
            "seconds": round(time.monotonic() - started, 3),
        }
        if replayed or state is not None:
            log.warning("%s recovered %s", self.name, self.recovery)
        return True

    # -- writing ----------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`Unavailable` if this state cannot take writes now."""
        if self.degraded is not None:
            raise Unavailable(self.degraded, 5.0, code="storage_unavailable")

    def append(self, record: JournalRecord) -> None:
        """Queue a record; durable once :meth:`commit` returns."""
        self.journal.append(record.kind, *record.fields())

    async def commit(self) -> None:
        """Make everything appended so far durable, or raise ``Unavailable``."""
        try:
            await self.journal.commit()
        except Exception as exc:
            self.degraded = str(getattr(exc, "message", exc))
            log.error("%s: %s", self.name, self.degraded)
            raise Unavailable(self.degraded, 5.0, code="storage_unavailable") from None
        self.maybe_snapshot()

    async def record(self, *records: JournalRecord) -> None:
        """Append ``records`` and wait until they are durable (``Unavailable`` if not)."""
        self.check()
        for rec in records:
            self.append(rec)
        await self.commit()

    def note_erasure(self) -> None:
        """Erased data is still named in older journal segments: snapshot soon."""
        self.erasures_pending += 1

    # -- snapshots --------------------------------------------------------------------

    def _idle(self) -> bool:
        return self.snapshot_task is None or self.snapshot_task.done()

    def maybe_snapshot(self) -> None:
        age = time.monotonic() - self.last_snapshot
        due = age >= self.settings.snapshot_interval_s
        big = self.journal.bytes_written >= self.settings.snapshot_journal_bytes
        erased = self.erasures_pending and age >= ERASURE_SNAPSHOT_DELAY_S
        if (due or big or erased) and self._idle():
            self.erasures_pending = 0
            self.journal.bytes_written = 0
            self.last_snapshot = time.monotonic()
            self.snapshot_task = asyncio.get_running_loop().create_task(self._quiet_snapshot())

    async def snapshot(self) -> dict[str, Any]:
        """Write a snapshot now and compact the journal behind it.

        Answers ``{"bytes", "seconds"}``; raises ``Unavailable`` on failure.
        """
        if not self.recovered:
            raise Unavailable(self.degraded or "not recovered", 5.0, code="storage_unavailable")
        # Capture state and rotate in one step (no await between): the
        # snapshot then covers exactly the records with LSN <= its own.
        upto = self.journal.rotate()
        state = self.owner.snapshot_state()
        state["lsn"] = self.journal.lsn
        first = self.owner.snapshot_sync()
        started = time.monotonic()
        try:
            size = await asyncio.to_thread(self.journal.write_snapshot, upto, state, first)
        except OSError as exc:
            self.degraded = f"snapshot failed: {exc.strerror or exc}"
            raise Unavailable(self.degraded, 5.0, code="storage_unavailable") from None
        self.last_snapshot = time.monotonic()
        if self.degraded is not None:
            # Storage had failed; memory is now safely on disk again. Leave
            # the degraded state only once a journal write goes through too.
            self.journal.failed = None
            self.journal.append(Probe.kind)
            try:
                await self.journal.commit()
            except RtimError as exc:
                self.degraded = exc.message
                raise Unavailable(self.degraded, 5.0, code="storage_unavailable") from None
            self.degraded = None
        return {"bytes": size, "seconds": round(time.monotonic() - started, 3)}

    def tick(self) -> None:
        """Called about once a second by the owner's timer: retry, heal, snapshot."""
        if not self.recovered:
            self.recover()  # the data directory was unusable at start: try again
        elif self.degraded is not None:
            # A failed write left memory ahead of the disk; a snapshot saves
            # all of it and clears the failure once the disk takes writes again.
            if self._idle():
                self.snapshot_task = asyncio.get_running_loop().create_task(self._quiet_snapshot())
        else:
            self.maybe_snapshot()

    async def _quiet_snapshot(self) -> None:
        try:
            await self.snapshot()
        except Unavailable as exc:  # degraded now; the next tick tries again
            log.error("%s: background snapshot failed: %s", self.name, exc.message)

    async def disk_bytes(self) -> int:
        return await asyncio.to_thread(self.journal.disk_bytes)

    def close(self) -> None:
        self.journal.close()
