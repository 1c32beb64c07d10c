"""``rtim export profiles``: stream every profile (or a segment's) to JSONL or Parquet.

Profiles come a page at a time from each shard (``POST /v1/segments/members``
with ``"profiles": true``; the rule, if any, is evaluated in the shards) and
are written as they arrive, so memory holds one page, never the whole set.
The output is written under a temporary name and renamed when complete: a
file at the final path is always a whole export.

- **JSONL** (``.jsonl``, gzipped when the name ends in ``.gz``): one profile per
  line, exactly as ``GET /v1/profiles/{id}`` shows it.
- **Parquet**: one row per profile; ``customer_id``, ``first_seen`` and
  ``last_seen`` as columns, ``holdings`` as a list of strings, and the nested
  parts (``attributes``, ``consents``, ``counters``, ``last``, ``history``)
  as JSON text columns, so the schema is fixed whatever the attributes are.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import httpx

from models.decisioning.segments import parse_segment_rule
from models.errors import ValidationError
from serving.bulk.progress import Progress
from serving.bulk.transport import ImportAborted, RetryingClient, ServerGone
from serving.credentials import client_headers

JSON_COLUMNS = ("attributes", "consents", "counters", "last", "history")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER_GONE = 0, 1, 2, 3
T = TypeVar("T")


@dataclass
class ExportOptions:
    url: str
    out: Path
    fmt: str = "jsonl"
    segment: str | None = None
    page_size: int = 1000
    retry_for_s: float = 60.0
    quiet: bool = False
    api_key: str | None = None  # see serving/credentials.py

    def __post_init__(self) -> None:
        if self.fmt not in ("jsonl", "parquet"):
            raise ValueError("format must be jsonl or parquet")
        if not 1 <= self.page_size <= 10_000:
            raise ValueError("page size must be 1..10000")


class JsonlSink:
    """One JSON object per line; gzipped when the final name ends in ``.gz``."""

    def __init__(self, path: Path) -> None:
        if path.name.endswith(".partial") and path.name[: -len(".partial")].endswith(".gz"):
            self._f: Any = gzip.open(path, "wt", encoding="utf-8")  # noqa: SIM115 (closed by close)
        else:
            self._f = path.open("w", encoding="utf-8")

    def write(self, profiles: list[dict[str, Any]]) -> None:
        self._f.writelines(json.dumps(p, separators=(",", ":")) + "\n" for p in profiles)

    def close(self) -> None:
        self._f.close()


class _ParquetSink:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        fields = [
            pa.field("customer_id", pa.string()),
            pa.field("first_seen", pa.float64()),
            pa.field("last_seen", pa.float64()),
            pa.field("holdings", pa.list_(pa.string())),
            *(pa.field(name, pa.string()) for name in JSON_COLUMNS),
        ]
        self.schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(path, self.schema)

    def write(self, profiles: list[dict[str, Any]]) -> None:
        columns: dict[str, list[Any]] = {
            "customer_id": [p["customer_id"] for p in profiles],
            "first_seen": [p.get("first_seen") for p in profiles],
            "last_seen": [p.get("last_seen") for p in profiles],
            "holdings": [list(p.get("holdings") or []) for p in profiles],
        }
        for name in JSON_COLUMNS:
            columns[name] = [json.dumps(p.get(name), separators=(",", ":")) for p in profiles]
        self._writer.write_table(self._pa.table(columns, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


class Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


Pages = AsyncIterator[tuple[list[dict[str, Any]], float | None]]


async def stream_to_file(
    out: Path, open_sink: Callable[[Path], Sink], pages: Pages, progress: Progress
) -> int:
    """Write each page of rows as it comes, under a temporary name renamed at the end.

    ``pages`` yields ``(rows, fraction done)``; a failure removes the partial
    file, so a file at ``out`` is always a whole export. Returns the rows written.
    """
    tmp = out.with_name(out.name + ".partial")
    sink = open_sink(tmp)
    written = 0
    try:
        async for rows, fraction in pages:
            if rows:
                sink.write(rows)
                written += len(rows)
            progress.update(written, fraction)
    except BaseException:
        sink.close()
        tmp.unlink(missing_ok=True)
        raise
    sink.close()
    os.replace(tmp, out)
    progress.finish(written, 1.0)
    return written


def open_sink(fmt: str, parquet: Callable[[Path], Sink]) -> Callable[[Path], Sink]:
    return parquet if fmt == "parquet" else JsonlSink


def client_for(url: str, api_key: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=120.0, headers=client_headers(api_key))


async def _profile_pages(sender: RetryingClient, rule: dict | None, page_size: int) -> Pages:
    shard, shards, after = 0, 1, None
    while shard < shards:
        status, body = await sender.post(
            "/v1/segments/members",
            {"rule": rule, "shard": shard, "after": after, "limit": page_size,
             "profiles": True},
        )  # fmt: skip
        if status != 200:
            raise ImportAborted(f"the server refused the export (HTTP {status}): {body}")
        shards = body["shards"]
        after = body["next"]
        if after is None:
            shard += 1
        yield [p for p in body["profiles"] if p is not None], shard / shards


async def _export(options: ExportOptions, rule: dict | None, log: TextIO) -> tuple[int, float]:
    progress = Progress("export", log, quiet=options.quiet)
    started = time.monotonic()
    async with client_for(options.url, options.api_key) as client:
        sender = RetryingClient(client, options.retry_for_s, options.quiet, "export")
        written = await stream_to_file(
            options.out, open_sink(options.fmt, _ParquetSink),
            _profile_pages(sender, rule, options.page_size), progress,
        )  # fmt: skip
    return written, time.monotonic() - started


def run_streaming(
    job: str, export: Callable[[], Awaitable[T]], log: TextIO
) -> tuple[int, T | None]:
    """Run an export coroutine; ``(exit code, result)`` with the failure said on ``log``."""
    try:
        return EXIT_OK, asyncio.run(export())
    except ServerGone as exc:
        print(f"\nrtim {job}: {exc}; nothing was written, run it again", file=log)
        return EXIT_SERVER_GONE, None
    except ImportAborted as exc:
        print(f"\nrtim {job}: {exc}", file=log)
        return EXIT_FAILED, None


def run_export(options: ExportOptions, log: TextIO | None = None) -> tuple[int, dict[str, Any]]:
    """Check, export, report; return ``(exit code, summary)``."""
    log = log or sys.stderr
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rule = None
    try:
        if options.segment is not None:
            rule = parse_segment_rule(options.segment)
        if options.fmt == "parquet":
            import pyarrow  # noqa: F401 (fail before anything is sent)
    except ValidationError as exc:
        print(f"rtim export: bad --segment: {exc.message}; nothing was read", file=log)
        return EXIT_USAGE, {}
    except ImportError:
        print("rtim export: Parquet needs pyarrow: pip install 'rtim[bulk]'", file=log)
        return EXIT_USAGE, {}
    code, result = run_streaming("export", lambda: _export(options, rule, log), log)
    if result is None:
        return code, {}
    written, seconds = result
    rate = written / seconds if seconds > 0 else 0.0
    return EXIT_OK, {
        "profiles": written,
        "seconds": round(seconds, 3),
        "profiles_per_s": round(rate, 1),
        "out": str(options.out),
        "format": options.fmt,
    }
