"""``rtim export history``: the interaction history of a time range, to JSONL or Parquet.

Rows come a page at a time from each shard (``GET /v1/history``) and are
written as they arrive, in the schema of ``docs/history.md`` (one row per
decision, shard by shard, oldest first). Outcomes are rows of their own in
the shards' files; the export joins them into their decision's ``outcomes``:
it first reads the outcome rows from ``--since`` on (small: a few dozen
bytes each) into memory, then streams the decisions, never holding more than
one page of them. The file is written under a temporary name and renamed at
the end (``serving/bulk/export.py``), with a progress line on stderr.

Parquet has the same columns; ``candidates``, ``chosen`` and ``outcomes``
are lists of structs and ``context`` is JSON text (its ``request.context`` is
free-form).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from serving.bulk.export import (
    EXIT_OK,
    EXIT_USAGE,
    Pages,
    client_for,
    open_sink,
    run_streaming,
    stream_to_file,
)
from serving.bulk.progress import Progress
from serving.bulk.transport import ImportAborted, RetryingClient

OUTCOME_SLACK_S = 60.0  # outcomes are read up to now + this (clock skew between hosts)


@dataclass
class HistoryExportOptions:
    url: str
    out: Path
    since: float
    until: float
    fmt: str = "jsonl"
    page_size: int = 2000
    retry_for_s: float = 60.0
    quiet: bool = False
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.fmt not in ("jsonl", "parquet"):
            raise ValueError("format must be jsonl or parquet")
        if not 1 <= self.page_size <= 10_000:
            raise ValueError("page size must be 1..10000")
        if self.since > self.until:
            raise ValueError("--since must not be after --until")


class _ParquetHistorySink:
    """The history rows as Parquet, one row group per page."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        s, f, b = pa.string(), pa.float64(), pa.bool_()
        candidate = pa.struct(
            [
                ("offer_id", s),
                ("channel", s),
                ("treatment", s),
                ("propensity", f),
                ("priority", f),
                ("value", f),
                ("cost", f),
            ]
        )
        chosen = pa.struct(
            [
                ("offer_id", s),
                ("channel", s),
                ("treatment", s),
                ("probability", f),
                ("propensity", f),
                ("value", f),
            ]
        )
        outcome = pa.struct([("offer_id", s), ("outcome", s), ("ts", f), ("positive", b),
                             ("value", f)])  # fmt: skip
        self.schema = pa.schema([
            ("decision_id", s), ("customer_id", s), ("ts", f), ("channels", pa.list_(s)),
            ("catalog_version", s), ("model_version", s), ("experiment", s), ("arm", s),
            ("policy", s), ("fallback", b), ("candidates", pa.list_(candidate)),
            ("chosen", pa.list_(chosen)), ("probability", f), ("context", s),
            ("outcomes", pa.list_(outcome)),
        ])  # fmt: skip
        self._pa = pa
        self._writer = pq.ParquetWriter(path, self.schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        table_rows = [
            {**r, "context": None if r.get("context") is None else json.dumps(r["context"])}
            for r in rows
        ]
        self._writer.write_table(self._pa.Table.from_pylist(table_rows, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


async def _pages(
    sender: RetryingClient, kind: str, since: float, until: float, page_size: int
) -> Pages:
    """Every row of ``kind`` in ``[since, until)``, shard by shard; fraction done by time."""
    shard, shards, cursor = 0, 1, None
    span = max(until - since, 1e-9)
    while shard < shards:
        status, body = await sender.get(
            "/v1/history",
            {"shard": shard, "kind": kind, "since": since, "until": until, "cursor": cursor,
             "limit": page_size},
        )  # fmt: skip
        if status != 200:
            raise ImportAborted(f"the server refused the export (HTTP {status}): {body}")
        shards, cursor, rows = body["shards"], body["next"], body["rows"]
        if cursor is None:
            shard += 1
            within = 0.0
        else:
            within = (rows[-1]["ts"] - since) / span if rows else 0.0
        yield rows, min(1.0, (shard + within) / shards)


async def _joined(options: HistoryExportOptions, sender: RetryingClient, log: TextIO) -> Pages:
    outcomes: dict[str, list[dict]] = {}
    reading = Progress("history outcomes", log, quiet=options.quiet)
    n = 0
    until = time.time() + OUTCOME_SLACK_S
    async for rows, fraction in _pages(sender, "outcome", options.since, until, 10_000):
        for o in rows:
            outcomes.setdefault(o["decision_id"], []).append(o)
        n += len(rows)
        reading.update(n, fraction)
    async for rows, fraction in _pages(
        sender, "decision", options.since, options.until, options.page_size
    ):
        for row in rows:
            mine = [o for o in outcomes.pop(row["decision_id"], ())
                    if o["customer_id"] == row["customer_id"]]  # fmt: skip
            row["outcomes"] = [
                {"offer_id": o["offer_id"], "outcome": o["outcome"], "ts": o["ts"],
                 "positive": o["positive"], "value": o["value"]}
                for o in sorted(mine, key=lambda o: o["ts"])
            ]  # fmt: skip
        yield rows, fraction


async def _export(options: HistoryExportOptions, log: TextIO) -> tuple[int, float]:
    started = time.monotonic()
    async with client_for(options.url, options.api_key) as client:
        sender = RetryingClient(client, options.retry_for_s, options.quiet, "export history")
        written = await stream_to_file(
            options.out, open_sink(options.fmt, _ParquetHistorySink),
            _joined(options, sender, log), Progress("export history", log, quiet=options.quiet),
        )  # fmt: skip
    return written, time.monotonic() - started


def run_history_export(
    options: HistoryExportOptions, log: TextIO | None = None
) -> tuple[int, dict[str, Any]]:
    """Export, report; return ``(exit code, summary)``."""
    log = log or sys.stderr
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if options.fmt == "parquet":
        try:
            import pyarrow  # noqa: F401 (fail before anything is read)
        except ImportError:
            print("rtim export: Parquet needs pyarrow: pip install 'rtim[bulk]'", file=log)
            return EXIT_USAGE, {}
    code, result = run_streaming("export history", lambda: _export(options, log), log)
    if result is None:
        return code, {}
    written, seconds = result
    return EXIT_OK, {
        "rows": written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(written / seconds if seconds > 0 else 0.0, 1),
        "out": str(options.out),
        "format": options.fmt,
        "since": options.since,
        "until": options.until,
    }
