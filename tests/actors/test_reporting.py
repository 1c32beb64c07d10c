"""A shard's report counters without Ray: counted live, rebuilt exactly by recovery."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.decisioning.request import DecideRequest
from models.partitioning import PartitionMap
from models.reporting.counters import bucket_of
from models.settings import load_settings

PMAP = PartitionMap.initial(8, 1).to_dict()


def make(data_dir: Path) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PMAP)


def response(cid: str, decision_id: str, outcome: str = "accepted") -> Event:
    return Event(uuid.uuid4().hex, cid, "response", time.time(), None, {"outcome": outcome},
                 None, decision_id)  # fmt: skip


async def decide_and_respond(shard: ProfileShardImpl, cids: list[str]) -> None:
    out = await shard.decide([DecideRequest(c, ("web",)) for c in cids], None, 1)
    events = [response(r.customer_id, r.decision_id) for r in out[::2]]
    await shard.apply_events(events, None, 1)


def totals(shard: ProfileShardImpl) -> dict:
    state = shard.reports.query(0, time.time() + 3600)
    return {k: sorted(map(repr, v)) for k, v in state.items()}


async def test_recovery_counts_exactly_what_was_counted_live(tmp_path: Path) -> None:
    shard = make(tmp_path)
    await decide_and_respond(shard, [f"a{i}" for i in range(6)])
    await shard.snapshot()  # these counts come back from the snapshot ...
    await decide_and_respond(shard, [f"b{i}" for i in range(5)])  # ... these from the journal
    rows = [[bucket_of(time.time()), "web", None, 4]]
    assert await shard.count_fallbacks("batch-1", rows) == 4
    assert await shard.count_fallbacks("batch-1", rows) == 4  # a retry after a lost answer
    live = totals(shard)
    arms = shard.reports.counters.arms
    assert sum(a[1] for a in arms.values()) == 11 and sum(a[2] for a in arms.values()) == 6
    assert sum(shard.reports.counters.fallbacks.values()) == 4  # the retried batch counted once
    shard.durable.close()

    again = make(tmp_path)
    assert totals(again) == live
    await again.snapshot()
    again.durable.close()
    assert totals(make(tmp_path)) == live
