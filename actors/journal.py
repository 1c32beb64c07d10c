"""A shard's durable log: append-only journal segments plus snapshots.

Layout of ``<data_dir>/shard-<i>/``::

    journal-00000007.log      records appended since snapshot 6
    snapshot-00000006.msgpack state up to the end of journal segment 6

A journal record is ``u32 length | u32 crc32 | msgpack payload``. Reading
stops at the first record whose length or checksum does not hold (a torn
write from a crash); that tail is logged and skipped, everything before it
is recovered.

Writes are group-committed: concurrent callers append to one buffer and
await :meth:`Journal.commit`; one write (and, with ``fsync=always``, one
``fsync``) makes the whole group durable before any of them is acknowledged.

A snapshot rotates the journal first, so the snapshot file covers exactly
the segments before the new one; once it is renamed into place those
segments are deleted (this is also how erasure reaches the disk).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from models.atomic_file import fsync_dir, replace_file
from models.errors import Unavailable

log = logging.getLogger("rtim.journal")


class Deferred:
    """A snapshot value built later, in :meth:`Journal.write_snapshot`'s thread.

    ``build`` must be safe to call from that thread while the event loop goes on
    (it reads only what it captured when the snapshot was taken).
    """

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build


class Piecewise:
    """A snapshot dict or list of the snapshot's own (nobody else changes it),
    packed item by item."""

    __slots__ = ("value",)

    def __init__(self, value: dict | list) -> None:
        self.value = value


class PackedItems(list):
    """A snapshot list whose items are msgpack already (written as they are)."""


def pack_state(state: dict[str, Any]) -> bytes:
    """``msgpack.packb(state)``, byte for byte, packed piece by piece.

    One ``packb`` call holds the GIL from the first byte to the last, so a
    snapshot written "in a thread" still stopped the shard's event loop for as
    long as it took to pack every profile and decision (about 60 ms for 20,000
    profiles and 10,000 decisions). Packed item by item, the loop gets the GIL
    back every ``sys.getswitchinterval()``. Each top-level value is packed in
    one call (so a live structure is read at one instant, as before), except
    :class:`Piecewise` ones, packed item by item, and :class:`PackedItems`,
    written as they are; :class:`Deferred` values are built here first.
    """
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(state))]
    for key, value in state.items():
        if isinstance(value, Deferred):
            value = value.build()
        parts.append(packer.pack(key))
        if isinstance(value, PackedItems):
            parts.append(packer.pack_array_header(len(value)))
            parts.extend(value)
        elif isinstance(value, Piecewise) and isinstance(value.value, dict):
            parts.append(packer.pack_map_header(len(value.value)))
            for k, v in value.value.items():
                parts.append(packer.pack(k))
                parts.append(packer.pack(v))
        elif isinstance(value, Piecewise):
            parts.append(packer.pack_array_header(len(value.value)))
            for item in value.value:
                parts.append(packer.pack(item))
        else:
            parts.append(packer.pack(value))
    return b"".join(parts)


_HEADER = struct.Struct("<II")
_SEGMENT = re.compile(r"^journal-(\d{8})\.log$")
_SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.msgpack$")
MAX_RECORD = 64 << 20
FSYNC_POLICIES = ("always", "batch", "off")
# A group commit (write + fsync) slower than this sends the next one to a thread;
# one that is faster again, thread hand-off included, brings them back inline.
SLOW_WRITE_S = 0.0005


def encode_record(payload: Any) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def read_records(path: Path) -> tuple[list[Any], int]:
    """All intact records of a segment, and the byte offset where they end."""
    data = path.read_bytes()
    out: list[Any] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        body = data[start : start + length]
        if length > MAX_RECORD or len(body) < length or zlib.crc32(body) != crc:
            break
        try:
            out.append(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except Exception:
            break
        pos = start + length
    if pos < len(data):
        log.warning(
            "%s: skipped a torn or corrupt tail of %d bytes after %d good records",
            path,
            len(data) - pos,
            len(out),
        )
    return out, pos


class Journal:
    """Append-only, group-committed journal with snapshots for one shard."""

    def __init__(self, directory: Path, fsync: str = "always", interval_s: float = 0.05) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}")
        self.dir = directory
        self.fsync = fsync
        self.interval_s = interval_s
        self._fd: int | None = None
        self.segment = 0
        self._next_segment = 1
        self.lsn = 0
        self._pending = bytearray()
        self._future: asyncio.Future | None = None
        self._flushing = False
        self._inflight: asyncio.Future | None = None
        self._flush_task: asyncio.Task | None = None
        self.failed: str | None = None  # set when a write failed; cleared by a snapshot
        self._last_sync = 0.0
        self.bytes_written = 0
        self.commits = 0
        # The last group commit took longer than SLOW_WRITE_S: the next one runs in a thread.
        self.slow_disk = False
        self._in_thread = False  # a write (and fsync) is running in a thread
        self._close_after_write = False  # close() came during it
        # Called with each group commit's write (+ fsync) seconds, e.g. a metrics histogram.
        self.observe: Callable[[float], None] | None = None

    # -- files ------------------------------------------------------------------

    def segments(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self._list() if (m := _SEGMENT.match(p.name)))

    def snapshots(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self._list() if (m := _SNAPSHOT.match(p.name)))

    def _list(self) -> list[Path]:
        return list(self.dir.iterdir()) if self.dir.exists() else []

    def seg_path(self, n: int) -> Path:
        return self.dir / f"journal-{n:08d}.log"

    def snap_path(self, n: int) -> Path:
        return self.dir / f"snapshot-{n:08d}.msgpack"

    # -- recovery ---------------------------------------------------------------

    def recover(self) -> tuple[Any | None, Iterator[Any]]:
        """The newest readable snapshot's state and the journal records after it.

        Records are ``[lsn, kind, *fields]``; those whose LSN the snapshot
        already covers (``state["lsn"]``) are skipped.

        Opens a fresh segment for new records afterwards (old segments are
        never appended to, so a torn tail stays where it was until compacted).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob(".snapshot-*.tmp"):
            tmp.unlink()  # a snapshot cut off by a crash; the previous one still stands
        state = None
        base = 0
        for n in reversed(self.snapshots()):
            try:
                state = msgpack.unpackb(
                    self.snap_path(n).read_bytes(), raw=False, strict_map_key=False
                )
                base = n
                break
            except Exception as exc:
                log.error("snapshot %s unreadable (%s); trying an older one", n, exc)
        segs = [n for n in self.segments() if n > base]
        self.segment = max([base, *segs])
        self._next_segment = self.segment + 1
        self._open(self._next_segment)

        covered = state.get("lsn", 0) if isinstance(state, dict) else 0
        self.lsn = covered

        def records() -> Iterator[Any]:
            for n in segs:
                recs, _ = read_records(self.seg_path(n))
                for rec in recs:
                    if rec[0] > covered:
                        self.lsn = max(self.lsn, rec[0])
                        yield rec

        return state, records()

    def _open(self, n: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self.segment = n
        self._fd = os.open(self.seg_path(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fsync != "off":
            fsync_dir(self.dir)

    def close(self) -> None:
        if self._in_thread:  # a write is in a thread: close once it is done
            self._close_after_write = True
            return
        self._close_after_write = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- writing ----------------------------------------------------------------

    def append(self, kind: str, *fields: Any) -> int:
        """Queue a record ``[lsn, kind, *fields]``; durable once :meth:`commit` returns."""
        self.lsn += 1
        self._pending += encode_record([self.lsn, kind, *fields])
        return self.lsn

    async def commit(self) -> None:
        """Wait until everything appended so far is written (and synced).

        Raises :class:`~models.errors.Unavailable` when the write failed.
        """
        if self.failed is not None:
            raise Unavailable(self.failed, 5.0, code="storage_failed")
        if not self._pending:
            if self._inflight is not None:
                await asyncio.shield(self._inflight)
            return
        loop = asyncio.get_running_loop()
        if self._future is None:
            self._future = loop.create_future()
        fut = self._future
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush_loop())
        await asyncio.shield(fut)

    async def _flush_loop(self) -> None:
        await asyncio.sleep(0)  # let callers already scheduled join this group
        try:
            while self._pending:
                buf, fut = bytes(self._pending), self._future
                self._pending = bytearray()
                self._future = None
                self._inflight = fut
                try:
                    # Inline while a write + fsync is quick (~75 µs on an idle disk,
                    # less than a thread hand-off costs in Python); in a thread
                    # while the disk is slow (1-6 ms on a busy one), so the actor
                    # keeps deciding and filling the next group instead of waiting.
                    started = time.perf_counter()
                    if self.slow_disk:
                        self._in_thread = True
                        try:
                            await asyncio.to_thread(self._write, buf)
                        finally:
                            self._in_thread = False
                            if self._close_after_write:
                                self.close()
                    else:
                        self._write(buf)
                    # Counted here, on the loop (a snapshot resets bytes_written).
                    self.bytes_written += len(buf)
                    self.commits += 1
                    took = time.perf_counter() - started
                    self.slow_disk = took > SLOW_WRITE_S
                    if self.observe is not None:
                        self.observe(took)
                except OSError as exc:
                    self.failed = f"journal write failed: {exc.strerror or exc}"
                    err = Unavailable(self.failed, 5.0, code="storage_failed")
                    for f in (fut, self._future):
                        if f is not None and not f.done():
                            f.set_exception(err)
                            f.exception()  # mark retrieved: callers may be gone
                    self._future = None
                    self._pending = bytearray()
                    return
                if fut is not None and not fut.done():
                    fut.set_result(None)
        finally:
            self._inflight = None
            self._flushing = False

    def _write(self, buf: bytes) -> None:
        if self._fd is None or self._next_segment != self.segment:
            self._open(self._next_segment)
        assert self._fd is not None
        view = memoryview(buf)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        now = time.monotonic()
        if self.fsync == "always" or (
            self.fsync == "batch" and now - self._last_sync >= self.interval_s
        ):
            os.fsync(self._fd)
            self._last_sync = now

    # -- snapshots --------------------------------------------------------------

    def rotate(self) -> int:
        """Send later writes to a new segment; return the number of the last old one.

        The switch happens at the next write (writes are serialised by the
        flush loop), so a write in flight is never cut off. Records written
        to either segment after this call carry LSNs that a snapshot taken
        at this instant already covers or not, and recovery filters by LSN.
        """
        closed = self._next_segment
        self._next_segment = closed + 1
        return closed

    def write_snapshot(self, upto: int, state: Any, first: Callable[[], None] | None = None) -> int:
        """Atomically write the state covering segments ``<= upto``; compact.

        Blocking: run it in a thread (it lets the loop run between the pieces
        it packs, :func:`pack_state`). Returns the snapshot's size in bytes.
        """
        try:
            data = pack_state(state)
        finally:
            if first is not None:
                first()  # e.g. fsync what the journal's records also wrote elsewhere
        replace_file(self.snap_path(upto), data)
        for n in self.segments():
            if n <= upto:
                self.seg_path(n).unlink(missing_ok=True)
        for n in self.snapshots():
            if n < upto:
                self.snap_path(n).unlink(missing_ok=True)
        return len(data)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._list() if p.is_file())
