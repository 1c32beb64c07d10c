"""``InteractionHistory``: one shard's durable, append-only interaction history on disk.

Every decision of the shard (no-message answers and the ingress's deadline
fallbacks included) is a JSON line in ``<data_dir>/shard-<i>/history/``, and
every outcome later attributed to a decision is a line of its own
(``"kind": "outcome"``); ``rtim export history`` joins them. The rows are
:meth:`~models.decisioning.record.DecisionRecord.history_row` and
:func:`~models.decisioning.record.outcome_row` (schema in ``docs/history.md``).

- **Separate from the journal.** The journal compacts behind each snapshot;
  the history never does. Files are named ``history-<first ms>-<seq>.jsonl``
  and rotated by size (``history_file_bytes``) or age (``history_file_s``);
  rotated files older than ``history_retention_days`` are deleted.
- **Nothing acknowledged is lost.** Rows are handed to the OS (``write``) in
  the same actor call that journals the decision, before it is answered, so a
  killed process (``kill -9``) loses none; files are fsynced at each snapshot.
  Should the machine crash before the OS wrote them, recovery derives the
  rows again from the journal's ``DecisionsMade`` and ``EventsApplied``
  records, skipping decision ids (and outcomes) the files already hold.
- **Erasure** rewrites every file that names the customer without their rows,
  in a thread while the shard serves (:meth:`InteractionHistory.erase_async`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from models.decisioning.record import DecisionRecord, outcome_row
from models.decisioning.request import DecideRequest

log = logging.getLogger("rtim.history")

PREFIX, SUFFIX = "history-", ".jsonl"
RECOVERY_MARGIN_S = 60.0  # files written this long before a snapshot are checked for duplicates
MAX_PAGE = 10_000
# A row can reach a file later than its decision (a fallback held while its shard
# was down, a row derived at recovery): time-filtered reads allow this much.
LATE_ROW_S = 3600.0
ERASE_INLINE_BYTES = 1 << 20  # an open file up to this size is erased on the event loop
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _nothing() -> None:
    pass


def row_context(packed_profile: bytes, req: DecideRequest) -> dict[str, Any]:
    """The ``context`` of a history row: the profile before the decision, and the request.

    ``packed_profile`` is the profile as the store held it (:meth:`Profile.pack`
    form): the row's JSON encoder writes bytes as base64 (standard alphabet,
    padded) in C, which is what the readers ``base64.b64decode``, so the
    profile is neither packed again nor base64-encoded in Python.
    """
    return {
        "profile": packed_profile,
        "request": {"channels": list(req.channels), "context": req.context,
                    "limit": req.limit, "placement": req.placement},
    }  # fmt: skip


class InteractionHistory:
    """Appends history rows for one shard; pages through them; erases customers."""

    def __init__(
        self,
        directory: Path,
        file_bytes: int = 64 << 20,
        file_s: float = 3600.0,
        retention_s: float = 0.0,
    ) -> None:
        self.dir = directory
        self.file_bytes = file_bytes
        self.file_s = file_s
        self.retention_s = retention_s  # 0: keep for ever
        self._buf: list[bytes] = []
        self._fh: Any = None
        self._erase_lock: asyncio.Lock | None = None  # one erasure at a time (erase_async)
        self._rewriting = threading.Lock()  # held while a thread rewrites a closed file
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self.rows = 0
        self.dropped = 0  # rows that could not be written (disk errors)
        # Recovery: decision ids and outcome keys already on disk (loaded lazily).
        self.recovering_since: float | None = None
        self._known: tuple[set[str], set[tuple]] | None = None

    # -- writing --------------------------------------------------------------------

    def add_decisions(self, records: list[DecisionRecord], contexts: list[Any] | None) -> None:
        for i, r in enumerate(records):
            self._buf.append(_encode(r.history_row(contexts[i] if contexts else None)))

    def add_outcome(self, record: Any, offer_id: str | None, outcome: str, ts: float,
                    positive: bool) -> None:  # fmt: skip
        """``record``: the decision (or just its ids when the log no longer holds it).

        The value is the offer's for a positive outcome (None when unknown), else 0.
        """
        value = record.value_of(offer_id) if positive else 0.0
        row = outcome_row(record.decision_id, record.customer_id, offer_id, outcome, ts,
                          positive, value)  # fmt: skip
        if self.recovering_since is not None:
            known = self._known_sets()[1]
            key = (record.decision_id, outcome, ts)
            if key in known:
                return  # replayed from the journal, and already on disk
            known.add(key)
        self._buf.append(_encode(row))

    def begin_recovery(self, snapshot_taken_at: float) -> None:
        """Records replayed from now on may already be on disk (written after the snapshot)."""
        self._known = None
        self.recovering_since = snapshot_taken_at

    def add_recovered(self, record: DecisionRecord) -> None:
        """A decision replayed from the journal: written unless the files have it."""
        known = self._known_sets()[0]
        if record.decision_id not in known:
            known.add(record.decision_id)
            self._buf.append(_encode(record.history_row(None)))

    def recovered(self) -> None:
        """Recovery is over: forget the duplicate check, write what it derived."""
        self._known = None
        self.recovering_since = None
        self.flush()

    def flush(self) -> None:
        """Hand the buffered rows to the OS (one write); rotate when due."""
        if not self._buf:
            return
        data = b"\n".join(self._buf) + b"\n"
        n = len(self._buf)
        self._buf.clear()
        try:
            fh = self._file()
            fh.write(data)
            fh.flush()
        except OSError as exc:
            self.dropped += n
            log.error("history %s: %d rows not written: %s", self.dir, n, exc)
            self._close()
            return
        self._size += len(data)
        self.rows += n
        if self._size >= self.file_bytes or time.time() - self._opened_at >= self.file_s:
            self._close()

    def sync_later(self) -> Callable[[], None]:
        """Flush now; the function returned fsyncs what was flushed (at snapshots,
        before the journal compacts; call it in a thread: an fsync can take a
        while and the loop goes on). It syncs a duplicate of the file's
        descriptor, so a rotation meanwhile (which fsyncs and closes the file)
        does not matter."""
        self.flush()
        if self._fh is None:
            return _nothing
        try:
            fd = os.dup(self._fh.fileno())
        except OSError:  # out of descriptors: sync here, on the loop, as before
            with contextlib.suppress(OSError):
                os.fsync(self._fh.fileno())
            return _nothing

        def sync() -> None:
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

        return sync

    def _file(self) -> Any:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            now = time.time()
            seq = 0
            while True:
                path = self.dir / f"{PREFIX}{int(now * 1000):015d}-{seq:04d}{SUFFIX}"
                if not path.exists():
                    break
                seq += 1
            self._fh = path.open("ab")
            self._path = path
            self._opened_at = now
            self._size = 0
        return self._fh

    def _close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
        self._fh = None
        self._path = None

    def close(self) -> None:
        self.flush()
        self._close()

    # -- files ------------------------------------------------------------------------

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir()
                      if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))  # fmt: skip

    @staticmethod
    def started(path: Path) -> float:
        return int(path.name[len(PREFIX) :].split("-")[0]) / 1000.0

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def prune(self, now: float) -> int:
        """Delete closed files whose newest row is past the retention; how many."""
        if self.retention_s <= 0:
            return 0
        if not self._rewriting.acquire(blocking=False):
            return 0  # an erasure is rewriting a file: next round
        try:
            return self._prune(now)
        finally:
            self._rewriting.release()

    def _prune(self, now: float) -> int:
        gone = 0
        for p in self.files():
            if p == self._path:
                continue
            try:
                if p.stat().st_mtime < now - self.retention_s:
                    p.unlink()
                    gone += 1
            except OSError:
                continue
        return gone

    def _known_sets(self) -> tuple[set[str], set[tuple]]:
        """Decision ids and outcome keys in the files a replayed record may be in."""
        if self._known is None:
            since = (self.recovering_since or 0.0) - RECOVERY_MARGIN_S  # 0: no snapshot
            ids: set[str] = set()
            outcomes: set[tuple] = set()
            for p in self.files():
                try:
                    if p.stat().st_mtime < since:
                        continue
                except OSError:
                    continue
                for row in _rows(p):
                    if row.get("kind") == "outcome":
                        outcomes.add((row["decision_id"], row["outcome"], row["ts"]))
                    else:
                        ids.add(row["decision_id"])
            self._known = (ids, outcomes)
        return self._known

    # -- reading ----------------------------------------------------------------------

    def page(
        self, kind: str, since: float, until: float, cursor: list | None, limit: int
    ) -> tuple[list[dict], list | None]:
        """Up to ``limit`` rows of ``kind`` (``decision`` or ``outcome``) with
        ``since <= ts < until``, from ``cursor`` (``[file name, byte offset]``) on.

        Returns the rows and the cursor of the next page (None at the end).
        It only reads files (it may run in a thread); rows still buffered are
        not seen: :meth:`flush` first.
        """
        limit = max(1, min(limit, MAX_PAGE))
        files = self.files()
        start = 0
        # A file holds rows from about its start to the next file's start.
        for i in range(len(files) - 1):
            if self.started(files[i + 1]) < since - LATE_ROW_S:
                start = i + 1
        offset = 0
        if cursor:
            name, offset = str(cursor[0]), int(cursor[1])
            start = next((i for i, p in enumerate(files) if p.name >= name), len(files))
            if start < len(files) and files[start].name != name:
                offset = 0
        out: list[dict] = []
        want_outcomes = kind == "outcome"
        for i in range(start, len(files)):
            path = files[i]
            if self.started(path) - LATE_ROW_S >= until:
                break
            try:
                fh = path.open("rb")
            except OSError:
                continue
            with fh:
                fh.seek(offset)
                pos = offset
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # a row being written: the next page has it
                    pos += len(line)
                    row = _parse(line)
                    if row is None or (row.get("kind") == "outcome") != want_outcomes:
                        continue
                    if since <= row["ts"] < until:
                        out.append(row)
                        if len(out) >= limit:
                            return out, [path.name, pos]
            offset = 0
        return out, None

    # -- erasure ----------------------------------------------------------------------

    def erase(self, customer_id: str) -> int:
        """Rewrite every file without the customer's rows; how many rows went.

        Blocking: for recovery, before the shard serves. A serving shard uses
        :meth:`erase_async`.
        """
        self.flush()
        needle = _encode(customer_id)
        return sum(self._erase_file(p, needle, customer_id) for p in self.files())

    async def mentions_async(self, customer_id: str) -> bool:
        """Whether any file may hold a row of the customer (read in a thread)."""
        self.flush()
        needle = _encode(customer_id)
        return await asyncio.to_thread(lambda: any(_holds(p, needle) for p in self.files()))

    async def erase_async(self, customer_id: str) -> int:
        """:meth:`erase`, with the closed files read and rewritten in a thread.

        The files are as large as the history is long (all of it when
        ``history_retention_days`` is 0), so reading them on the shard's event
        loop stopped every decision for the time of an erasure. The open file
        is rewritten here when small (``ERASE_INLINE_BYTES``), else closed so
        the thread takes it too (new rows go to a new file); the thread works
        only on files nothing appends to, one erasure at a time, and
        :meth:`prune` skips a round rather than delete a file being rewritten.
        Rows written while it runs are newer than the erasure and stay.
        """
        if self._erase_lock is None:
            self._erase_lock = asyncio.Lock()
        async with self._erase_lock:
            self.flush()
            needle = _encode(customer_id)
            removed = 0
            if self._path is not None and self._size <= ERASE_INLINE_BYTES:
                removed += self._erase_file(self._path, needle, customer_id)
            else:
                self._close()
            closed = [p for p in self.files() if p != self._path]
            removed += await asyncio.to_thread(self._erase_files, closed, needle, customer_id)
            return removed

    def _erase_files(self, paths: list[Path], needle: bytes, customer_id: str) -> int:
        removed = 0
        for path in paths:
            with self._rewriting:  # prune() leaves the file alone meanwhile
                removed += self._erase_file(path, needle, customer_id)
        return removed

    def _erase_file(self, path: Path, needle: bytes, customer_id: str) -> int:
        """Rewrite one file without the customer's rows; how many went."""
        data = _read(path)  # b"" when pruned meanwhile
        if needle not in data:
            return 0
        kept = []
        removed = 0
        for line in data.splitlines(keepends=True):
            row = _parse(line)
            if row is not None and row.get("customer_id") == customer_id:
                removed += 1
            else:
                kept.append(line)
        if path == self._path:
            self._close()
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.writelines(kept)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("history %s: erasure of %s not written: %s", path, customer_id, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return 0
        return removed


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _holds(path: Path, needle: bytes) -> bool:
    return needle in _read(path)


def _parse(line: bytes) -> dict | None:
    try:
        row = _decode(line)
    except msgspec.DecodeError:
        return None
    return row if isinstance(row, dict) else None


def _rows(path: Path) -> Iterator[dict]:
    try:
        with path.open("rb") as fh:
            for line in fh:
                row = _parse(line)
                if row is not None:
                    yield row
    except OSError:
        return
