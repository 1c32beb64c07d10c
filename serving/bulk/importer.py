"""``rtim import``: stream files of customers and events into a running server.

The flow, per file in order:

1. **Check everything first.** Every file is opened, decompressed and its
   header (CSV) or schema (Parquet) read; every mapped column must exist. A
   problem stops the command before anything is sent. With ``--strict`` every
   row is also validated first, and nothing is sent if any is bad.
2. **Rows → events.** Each row becomes an API event object through the
   column mapping (:mod:`models.bulk.mapping`) and is validated by the API's
   own :func:`~models.customer.events.parse_event`. A bad row goes to the
   rejects file (file, line, field, the API's message) and the import goes on.
   A row without an event id gets one derived from the file and the row.
3. **Lanes.** Events are dealt to ``concurrency`` lanes by a stable hash of the
   customer id; each lane sends one msgpack batch at a time to ``POST
   /v1/events``. Lanes run concurrently, and one customer's events stay in
   file order because they always travel in the same lane.
4. **Acknowledged → done.** When the server acknowledges a batch its rows are
   marked done in the checkpoint (:mod:`serving.bulk.checkpoint`), which
   ``--resume`` reads after a crash. A batch the server refuses because of one
   event (400 naming ``events[i]``) loses that event to the rejects file and
   is sent again without it; a batch over the server's size limit is halved.
5. **Server trouble.** Connection errors, timeouts and 502/503/504 are retried
   with exponential backoff for ``retry_for_s``; then the import stops with
   exit code 3 and tells how to resume.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from models.bulk.mapping import ColumnMapping, derive_event_id
from models.customer.events import parse_event
from models.errors import ValidationError
from serving.bulk.checkpoint import FileProgress, ImportCheckpoint
from serving.bulk.progress import Progress
from serving.bulk.sources import Row, RowSource, SourceError, open_source
from serving.bulk.transport import ImportAborted, RetryingClient, ServerGone
from serving.credentials import client_headers

_EVENT_FIELD = re.compile(r"^events\[(\d+)\]\.?")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER_GONE = 0, 1, 2, 3


@dataclass
class ImportOptions:
    """What to import, where to, and how."""

    url: str
    files: list[str]
    mapping: ColumnMapping | None = None
    fmt: str | None = None
    strict: bool = False
    resume: bool = False
    checkpoint: Path = Path("rtim-import.checkpoint.json")
    rejects: Path = Path("rtim-import.rejects.csv")
    batch_size: int = 1000
    concurrency: int = 8
    retry_for_s: float = 60.0
    timeout_s: float = 30.0
    max_future_s: float = 300.0
    quiet: bool = False
    api_key: str | None = None  # see serving/credentials.py

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("give at least one file")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError("batch size must be 1..100000")
        if not 1 <= self.concurrency <= 64:
            raise ValueError("concurrency must be 1..64")
        if self.retry_for_s < 0:
            raise ValueError("retry_for_s must be >= 0")


@dataclass
class ImportSummary:
    """What happened to the rows: every row read is applied, a duplicate or rejected."""

    files: int = 0
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rows_this_run: int = 0

    @property
    def rate(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "read": self.read,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rate, 1),
        }


@dataclass
class _Pending:
    """Rows on their way to the server: (file progress, row index, line, event)."""

    rows: list[tuple[FileProgress, int, int, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task | None = None


def _lane_of(event: dict[str, Any], lanes: int) -> int:
    key = event.get("customer_id") or repr(sorted((event.get("identifiers") or {}).items()))
    return zlib.crc32(str(key).encode()) % lanes


def event_of_row(
    row: Row, src: RowSource, mapping: ColumnMapping | None, max_future_s: float
) -> dict[str, Any]:
    """The validated API event object for a row, or ValidationError in the API's words."""
    if row.error is not None or row.data is None:
        raise ValidationError(row.error or "unreadable row", None)
    event = mapping.to_event(row.data) if mapping is not None else dict(row.data)
    if event.get("event_id") is None:
        event["event_id"] = derive_event_id(src.identity, row.line, row.content)
    parse_event(event, 0, time.time(), max_future_s)
    return event


class Importer:
    """One import run; see the module docstring for the flow."""

    def __init__(self, options: ImportOptions, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out or sys.stderr
        self.sources: list[RowSource] = []
        self.mappings: list[ColumnMapping | None] = []
        self.summary = ImportSummary()
        self.checkpoint = ImportCheckpoint(options.checkpoint)
        self._rejects: TextIO | None = None
        self._rejects_csv: Any = None
        self._current: RowSource | None = None
        self._rows_read = 0
        self._saving = asyncio.Lock()  # one checkpoint write at a time
        self._marks = self._saved = 0  # checkpoint saves asked for / covered by a write

    # -- 1. checks before anything is sent ---------------------------------------------

    def prepare(self) -> None:
        """Open and check every file and the mapping; raise SourceError/ValidationError."""
        opts = self.options
        for path in opts.files:
            src = open_source(path, opts.fmt)
            mapping = opts.mapping
            if src.header is not None:
                if mapping is None or mapping.is_empty:
                    mapping = ColumnMapping.default_for(src.header)
                else:
                    mapping.check_columns(src.header, str(src.path))
                    mapping = mapping.over_api_named(src.header)
            elif mapping is not None and mapping.is_empty:
                mapping = None  # JSONL without a mapping: each line is an API event object
            self.sources.append(src)
            self.mappings.append(mapping)
        if opts.resume:
            self.checkpoint = ImportCheckpoint.load(opts.checkpoint)
            self.checkpoint.check_files({str(s.path): s.identity for s in self.sources})
        self.summary.files = len(self.sources)

    def validate_all(self) -> list[str]:
        """``--strict``: every problem row as ``file:line: field: message`` (at most 20)."""
        problems: list[str] = []
        for src, mapping in zip(self.sources, self.mappings):
            for row in src.rows():
                try:
                    self.event_of(row, src, mapping)
                except ValidationError as exc:
                    problems.append(f"{src.path}:{row.line}: {exc.field or '-'}: {exc.message}")
                    if len(problems) >= 20:
                        return problems
        return problems

    # -- 2. rows → events --------------------------------------------------------------

    def event_of(self, row: Row, src: RowSource, mapping: ColumnMapping | None) -> dict[str, Any]:
        return event_of_row(row, src, mapping, self.options.max_future_s)

    def _reject(self, src_path: str, line: int, fld: str | None, message: str) -> None:
        if fld is not None:
            fld = _EVENT_FIELD.sub("", fld) or None
        assert self._rejects_csv is not None and self._rejects is not None
        self._rejects_csv.writerow([src_path, line, fld or "", message])
        self._rejects.flush()
        self.summary.rejected += 1
        self.summary.read += 1

    # -- 3./4. lanes and acknowledgements ------------------------------------------------

    async def _send(self, sender: RetryingClient, batch: _Pending) -> None:
        rows = batch.rows
        while rows:
            status, body = await sender.post("/v1/events", {"events": [r[3] for r in rows]})
            if status == 200:
                self.summary.applied += int(body.get("applied", 0))
                self.summary.duplicates += int(body.get("duplicates", 0))
                self.summary.read += len(rows)
                for fp, index, _line, _ev in rows:
                    fp.mark(index)
                await self._save_checkpoint()
                return
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = str(error.get("message", body))
            if status == 413 and len(rows) > 1:
                half = len(rows) // 2
                await self._send(sender, _Pending(rows[:half]))
                rows = rows[half:]
                continue
            match = _EVENT_FIELD.match(str(error.get("field") or ""))
            if status in (400, 409, 422) and match and int(match.group(1)) < len(rows):
                if self.options.strict:
                    fp, _i, line, _ev = rows[int(match.group(1))]
                    raise ImportAborted(f"{fp.path}:{line}: the server refused: {message}")
                fp, index, line, _ev = rows.pop(int(match.group(1)))
                self._reject(fp.path, line, error.get("field"), message)
                fp.mark(index)
                continue
            raise ImportAborted(f"the server refused a batch (HTTP {status}): {message}")

    async def _save_checkpoint(self) -> None:
        """Record every row marked done so far; return once a write covering them is on disk.

        The write (rename and fsync: milliseconds on a busy disk) runs in a
        thread so the other lanes keep reading and sending meanwhile; one
        write at a time, each of the newest state, and a caller whose marks
        a later snapshot already covered does not write again.
        """
        assert self._rejects is not None
        self._marks += 1
        mine = self._marks
        async with self._saving:
            if self._saved >= mine:
                return
            self.checkpoint.counters = {
                "read": self.summary.read,
                "applied": self.summary.applied,
                "duplicates": self.summary.duplicates,
                "rejected": self.summary.rejected,
            }
            self.checkpoint.rejects_bytes = self._rejects.tell()
            content, covers = self.checkpoint.encode(), self._marks
            await asyncio.to_thread(self.checkpoint.write, content)
            self._saved = covers

    def _open_rejects(self) -> None:
        path = self.options.rejects
        if self.options.resume and path.exists():
            with path.open("r+b") as f:
                f.truncate(self.checkpoint.rejects_bytes)
            self._rejects = path.open("a", newline="", encoding="utf-8")
            self._rejects_csv = csv.writer(self._rejects)
            return
        self._rejects = path.open("w", newline="", encoding="utf-8")
        self._rejects_csv = csv.writer(self._rejects)
        self._rejects_csv.writerow(["file", "line", "field", "error"])
        self._rejects.flush()

    def _fraction(self) -> float:
        total = sum(s.size for s in self.sources) or 1
        done = 0.0
        for s in self.sources:
            fp = self.checkpoint.files.get(s.identity)
            if fp is not None and fp.complete:
                done += s.size
            elif s is self._current:
                done += s.fraction() * s.size
        return min(done / total, 1.0)

    async def _progress(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(0.5)
            progress.update(self._rows_read, self._fraction(), self._counts())

    def _counts(self) -> str:
        s = self.summary
        return f"applied {s.applied:,}  duplicates {s.duplicates:,}  rejected {s.rejected:,}"

    async def run(self) -> ImportSummary:
        """Import every file (after :meth:`prepare`); return the summary."""
        opts = self.options
        if opts.strict:
            problems = self.validate_all()
            if problems:
                raise ImportAborted(
                    "--strict: nothing was sent; bad rows:\n  " + "\n  ".join(problems)
                )
        restored = self.checkpoint.counters
        s = self.summary
        s.read, s.applied = restored.get("read", 0), restored.get("applied", 0)
        s.duplicates, s.rejected = restored.get("duplicates", 0), restored.get("rejected", 0)
        self._open_rejects()
        progress = Progress("import", self.out, quiet=opts.quiet)
        started = time.monotonic()
        limits = httpx.Limits(
            max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency
        )
        async with httpx.AsyncClient(
            base_url=opts.url,
            timeout=opts.timeout_s,
            limits=limits,
            headers=client_headers(opts.api_key),
        ) as client:
            sender = RetryingClient(client, opts.retry_for_s, opts.quiet, "import")
            ticker = asyncio.create_task(self._progress(progress))
            try:
                for src, mapping in zip(self.sources, self.mappings):
                    await self._import_file(sender, src, mapping)
            finally:
                ticker.cancel()
                s.seconds = time.monotonic() - started
                s.rows_this_run = self._rows_read
                if self._rejects is not None:
                    self._rejects.close()
        progress.finish(self._rows_read, 1.0, self._counts())
        return s

    async def _import_file(
        self, sender: RetryingClient, src: RowSource, mapping: ColumnMapping | None
    ) -> None:
        opts = self.options
        fp = self.checkpoint.file(str(src.path), src.identity)
        if fp.complete:
            return
        self._current = src
        lanes = [_Pending() for _ in range(opts.concurrency)]
        try:
            for row in src.rows(skip_below=fp.done_below):
                if fp.is_done(row.index):
                    continue
                self._rows_read += 1
                try:
                    event = self.event_of(row, src, mapping)
                except ValidationError as exc:
                    self._reject(str(src.path), row.line, exc.field, exc.message)
                    fp.mark(row.index)
                    continue
                lane = lanes[_lane_of(event, opts.concurrency)]
                lane.rows.append((fp, row.index, row.line, event))
                if len(lane.rows) >= opts.batch_size:
                    await self._dispatch(sender, lane)
                if self._rows_read % 256 == 0:
                    await asyncio.sleep(0)  # let acknowledgements and progress run
            for lane in lanes:
                if lane.rows:
                    await self._dispatch(sender, lane)
            for lane in lanes:
                if lane.task is not None:
                    await lane.task
        except BaseException:
            for lane in lanes:
                if lane.task is None:
                    continue
                if lane.task.done():
                    if not lane.task.cancelled():
                        lane.task.exception()  # retrieved: one error is reported, not one per lane
                else:
                    lane.task.cancel()
            raise
        fp.complete = True
        await self._save_checkpoint()

    async def _dispatch(self, sender: RetryingClient, lane: _Pending) -> None:
        """Send the lane's open batch once its previous batch is acknowledged."""
        if lane.task is not None:
            await lane.task  # one batch in flight per lane keeps each customer's order
        batch = _Pending(lane.rows)
        lane.rows = []
        lane.task = asyncio.create_task(self._send(sender, batch))


def run_import(options: ImportOptions, out: TextIO | None = None) -> tuple[int, ImportSummary]:
    """Check, import, print; return ``(exit code, summary)`` (see ``EXIT_*``)."""
    out = out or sys.stderr
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per batch
    importer = Importer(options, out)
    try:
        importer.prepare()
    except (SourceError, ValidationError) as exc:
        print(f"rtim import: {getattr(exc, 'message', exc)}; nothing was sent", file=out)
        return EXIT_USAGE, importer.summary
    except Exception as exc:  # CheckpointError and the like: still before anything is sent
        print(f"rtim import: {exc}; nothing was sent", file=out)
        return EXIT_USAGE, importer.summary
    try:
        summary = asyncio.run(importer.run())
    except ServerGone as exc:
        print(
            f"\nrtim import: {exc}.\n  Every acknowledged row is recorded in "
            f"{options.checkpoint}; run the same command again with --resume to continue.",
            file=out,
        )
        return EXIT_SERVER_GONE, importer.summary
    except (ImportAborted, SourceError) as exc:
        print(f"\nrtim import: {exc}", file=out)
        if not options.strict:
            print(
                f"  Continue with the same command and --resume ({options.checkpoint}).", file=out
            )
        return EXIT_FAILED, importer.summary
    return EXIT_OK, summary
