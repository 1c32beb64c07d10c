"""Durability figures: journal overhead on ingest, recovery time, disk bytes.

Runs a real :class:`actors.shard.ProfileShardImpl` in this process (no Ray,
no HTTP, so only the shard's own work and its disk I/O are measured) on a
temporary data directory:

1. ingest throughput of event batches (100 events each) under
   ``fsync=always``, ``batch`` and ``off``, interleaved and repeated, with the
   ratios to ``off`` (the journal's overhead) from the same run;
2. recovery time for N profiles, from a snapshot and from journal replay;
3. disk bytes per profile (snapshot and journal).

    python -m loadtest.durability --profiles 100000 --out var/bench/durability.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.partitioning import PartitionMap
from models.settings import load_settings

PMAP = PartitionMap.initial(16, 1).to_dict()
EVENT_TYPES = ("page_view", "page_view", "add_to_cart", "complaint", "profile_update")


def shard(data_dir: Path, fsync: str) -> ProfileShardImpl:
    settings = load_settings(
        None,
        {"data_dir": str(data_dir), "partitions": 16, "shards": 1, "fsync": fsync,
         "snapshot_interval_s": 1e9, "snapshot_journal_bytes": 1 << 40},
    )  # fmt: skip
    return ProfileShardImpl(0, settings.to_dict(), PMAP)


def batch(customers: list[str], start: int, size: int = 100) -> list[Event]:
    now = time.time()
    out = []
    for i in range(start, start + size):
        cid = customers[i % len(customers)]
        etype = EVENT_TYPES[i % len(EVENT_TYPES)]
        attrs: dict[str, Any] = {}
        if etype == "add_to_cart":
            attrs = {"item": f"sku-{i % 50}", "price": 9.5}
        elif etype == "profile_update":
            attrs = {"age": 20 + i % 50, "income": 20000 + (i % 90) * 1000}
        elif etype == "page_view":
            attrs = {"page": f"/p/{i % 30}"}
        out.append(Event(uuid.uuid4().hex, cid, etype, now, "web", attrs, None, None))
    return out


async def ingest_rate(s: ProfileShardImpl, customers: list[str], seconds: float) -> float:
    """Events per second through apply_events with 8 concurrent writers."""
    done = 0
    stop = time.perf_counter() + seconds

    async def writer(k: int) -> None:
        nonlocal done
        i = k * 1_000_000
        while time.perf_counter() < stop:
            await s.apply_events(batch(customers, i), None, 1)
            i += 100
            done += 100

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(8)))
    return done / (time.perf_counter() - t0)


async def run(profiles: int, seconds: float, repeats: int, root: Path) -> dict[str, Any]:
    customers = [f"cust-{i}" for i in range(5000)]
    rates: dict[str, list[float]] = {"always": [], "batch": [], "off": []}
    for r in range(repeats):
        for mode in rates:
            d = root / f"ingest-{mode}-{r}"
            s = shard(d, mode)
            rates[mode].append(await ingest_rate(s, customers, seconds))
            s.durable.journal.close()
            shutil.rmtree(d)
            print(f"  ingest fsync={mode:<6} repeat {r + 1}: {rates[mode][-1]:,.0f} events/s",
                  flush=True)  # fmt: skip
    ingest = {m: statistics.median(v) for m, v in rates.items()}

    print(f"loading {profiles:,} profiles ...", flush=True)
    d = root / "recovery"
    s = shard(d, "off")
    ids = [f"p-{i}" for i in range(profiles)]
    for i in range(0, profiles * 3, 1000):
        await s.apply_events(batch(ids, i, 1000), None, 1)
        if i % (profiles // 2 or 1) < 1000:
            print(f"  {i // 3:,}/{profiles:,}", flush=True)
    await s.durable.journal.commit()
    s.durable.journal.close()
    journal_bytes = s.durable.journal.disk_bytes()
    t0 = time.perf_counter()
    replayed = shard(d, "off")
    replay_s = time.perf_counter() - t0
    assert len(replayed.profiles.store) == profiles
    snap = await replayed.snapshot()
    replayed.durable.journal.close()
    snapshot_bytes = replayed.durable.journal.disk_bytes()
    t0 = time.perf_counter()
    from_snapshot = shard(d, "off")
    snapshot_s = time.perf_counter() - t0
    assert len(from_snapshot.profiles.store) == profiles
    from_snapshot.durable.journal.close()
    return {
        "ingest_events_per_s": ingest,
        "journal_overhead": {
            "always_vs_off": ingest["always"] / ingest["off"],
            "batch_vs_off": ingest["batch"] / ingest["off"],
        },
        "recovery": {
            "profiles": profiles,
            "from_journal_s": replay_s,
            "from_snapshot_s": snapshot_s,
            "snapshot_write_s": snap["seconds"],
        },
        "disk": {
            "snapshot_bytes_per_profile": snapshot_bytes / profiles,
            "journal_bytes_per_event": journal_bytes / (profiles * 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per ingest phase")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="var/bench/durability.json")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rtim-durability-", dir=Path("var").resolve()))
    try:
        result = asyncio.run(run(args.profiles, args.seconds, args.repeats, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    ing, rec, disk = result["ingest_events_per_s"], result["recovery"], result["disk"]
    print(f"\ningest (events/s, median of {args.repeats}): "
          + ", ".join(f"fsync={m} {v:,.0f}" for m, v in ing.items()))  # fmt: skip
    print(f"journal overhead: always/off {result['journal_overhead']['always_vs_off']:.2f}, "
          f"batch/off {result['journal_overhead']['batch_vs_off']:.2f}")  # fmt: skip
    print(f"recovery of {rec['profiles']:,} profiles: journal replay {rec['from_journal_s']:.2f}s, "
          f"snapshot {rec['from_snapshot_s']:.2f}s")  # fmt: skip
    print(f"disk: {disk['snapshot_bytes_per_profile']:.0f} B/profile in a snapshot, "
          f"{disk['journal_bytes_per_event']:.0f} B/event in the journal")  # fmt: skip
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
