"""``rtim import --ray DIR…``: import a directory of files as a Ray job, with Ray Data.

For inputs larger than one machine. The driver (run it on the cluster, e.g.
``ray job submit -- rtim import --ray --address auto /data/events/``) lists
the files and builds one Ray Data pipeline:

1. **Read** (``map_batches`` over the file list, one file per task, spread
   over the cluster's nodes): each file is streamed by the same
   :class:`~serving.bulk.sources.RowSource` as ``rtim import`` and each row
   mapped and validated by the same code, with the same derived event ids
   (file identity + line + content), so the Ray job and the CLI can take
   turns on the same files without counting anything twice. Rows come out in
   batches of msgpack-packed API events; bad rows come out as rejects.
2. **Write** (``map_batches`` into a small pool of :class:`ShardWriter`
   actors): each batch of events is grouped by owning shard and applied by
   calling the shards directly (``ShardRegion.apply_events``: the partition
   map comes from the coordinator, one call per shard, no HTTP).
3. The driver collects one small stats row per batch (applied, duplicates,
   rejects with file, line, field and the API's message) and prints the
   summary; rejects go to the rejects file.

Every path must be readable from every node (a shared filesystem, or the same
files on each node). There is no checkpoint: a failed job is simply run
again, and the derived event ids make it idempotent within the profiles'
event-id memory (last 32 ids for 24 hours per customer).
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import msgpack

from actors.coordinator import COORDINATOR_NAME, NAMESPACE
from models.bulk.mapping import ColumnMapping
from models.customer.events import parse_event
from models.errors import ValidationError
from models.settings import load_settings
from serving.bulk.progress import Progress
from serving.bulk.sources import FORMATS, SourceError, detect_format, open_source

ROWS_PER_BATCH = 1000


def input_files(paths: list[str]) -> list[str]:
    """The importable files under ``paths`` (directories walked), sorted; SourceError if none."""
    found: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    try:
                        detect_format(f)
                    except SourceError:
                        continue
                    found.append(str(f.resolve()))
        elif p.is_file():
            found.append(str(p.resolve()))
        else:
            raise SourceError(f"{p}: no such file or directory")
    if not found:
        raise SourceError(f"no {'/'.join(FORMATS)} files under {', '.join(paths)}")
    return found


def _mapped_events(
    path: str, mapping: ColumnMapping | None, max_future_s: float
) -> Iterator[dict[str, Any]]:
    """Rows of one file as ``{"event": packed or b"", "file", "line", "field", "error"}``."""
    from serving.bulk.importer import event_of_row

    src = open_source(path)
    file_mapping = mapping
    if src.header is not None:
        if mapping is None or mapping.is_empty:
            file_mapping = ColumnMapping.default_for(src.header)
        else:
            mapping.check_columns(src.header, path)
            file_mapping = mapping.over_api_named(src.header)
    for row in src.rows():
        try:
            event = event_of_row(row, src, file_mapping, max_future_s)
        except ValidationError as exc:
            yield {"event": b"", "file": path, "line": row.line,
                   "field": exc.field or "", "error": exc.message}  # fmt: skip
        else:
            yield {"event": msgpack.packb(event), "file": path, "line": row.line,
                   "field": "", "error": ""}  # fmt: skip


class FileReader:
    """Ray Data UDF: a batch of file paths in, batches of packed events out (streamed)."""

    def __init__(self, mapping: ColumnMapping | None, max_future_s: float) -> None:
        self.mapping = mapping
        self.max_future_s = max_future_s

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list]]:
        out: dict[str, list] = {k: [] for k in ("event", "file", "line", "field", "error")}
        for path in batch["path"]:
            for item in _mapped_events(str(path), self.mapping, self.max_future_s):
                for key, value in item.items():
                    out[key].append(value)
                if len(out["event"]) >= ROWS_PER_BATCH:
                    yield out
                    out = {k: [] for k in out}
        if out["event"]:
            yield out


class ShardWriter:
    """Ray Data UDF (an actor): applies batches of events straight to their owning shards."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from serving.region import ShardRegion

        self.loop = asyncio.new_event_loop()
        self.region = ShardRegion(load_settings(None, settings))
        self.loop.run_until_complete(self.region.start())

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        events, rejects = [], []
        now = time.time()
        for packed, path, line, fld, error in zip(
            batch["event"], batch["file"], batch["line"], batch["field"], batch["error"]
        ):
            if error:
                rejects.append([str(path), int(line), str(fld), str(error)])
                continue
            raw = msgpack.unpackb(packed, raw=False)
            events.append(parse_event(raw, 0, now, 1e12))  # validated when read
        applied = dups = 0
        if events:
            applied, dups, _erased = self.loop.run_until_complete(self.region.apply_events(events))
        return {
            "rows": [len(events) + len(rejects)],
            "applied": [applied],
            "duplicates": [dups],
            "rejects": [msgpack.packb(rejects)],
        }


def run_ray_import(
    paths: list[str],
    mapping: ColumnMapping | None,
    rejects_path: Path,
    address: str | None = None,
    writers: int = 2,
    max_future_s: float = 300.0,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Import every file under ``paths`` with Ray Data; return the summary."""
    import ray

    log = log or sys.stderr
    files = input_files(paths)
    for f in files:  # unreadable files and unknown columns fail before anything is sent
        src = open_source(f)
        if src.header is not None and mapping is not None and not mapping.is_empty:
            mapping.check_columns(src.header, f)
    if not ray.is_initialized():
        ray.init(address=address or "auto", log_to_driver=False)
    try:
        ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    except ValueError:
        raise SourceError(
            "no rtim server runs on this Ray cluster (no shard coordinator)"
        ) from None
    progress = Progress("import (ray)", log)
    started = time.monotonic()
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(FileReader, fn_constructor_args=(mapping, max_future_s), batch_size=1,
                        concurrency=max(1, min(len(files), 4)))  # fmt: skip
    ds = ds.map_batches(ShardWriter, fn_constructor_args=({},), batch_size=ROWS_PER_BATCH,
                        concurrency=writers)  # fmt: skip
    summary = {"files": len(files), "read": 0, "applied": 0, "duplicates": 0, "rejected": 0}
    with rejects_path.open("w", newline="", encoding="utf-8") as rf:
        writer = csv.writer(rf)
        writer.writerow(["file", "line", "field", "error"])
        for stats in ds.iter_rows():
            summary["read"] += int(stats["rows"])
            summary["applied"] += int(stats["applied"])
            summary["duplicates"] += int(stats["duplicates"])
            rejects = msgpack.unpackb(stats["rejects"], raw=False)
            summary["rejected"] += len(rejects)
            writer.writerows(rejects)
            progress.update(summary["read"])
    progress.finish(summary["read"], None)
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary
