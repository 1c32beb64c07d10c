"""A partition hand-off between two real shards without Ray: journalled on both sides."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from actors.replies import Erased, Failed, StaleEpoch
from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.decisioning.request import DecideRequest
from models.partitioning import Move, PartitionMap, after_move, partition_of
from models.settings import load_settings

PARTITIONS = 8
START = PartitionMap(1, (0,) * PARTITIONS, 2)  # shard 0 owns everything, shard 1 nothing


def make(data_dir: Path, index: int) -> ProfileShardImpl:
    settings = load_settings(
        None, {"data_dir": str(data_dir), "partitions": PARTITIONS, "shards": 2}
    )
    return ProfileShardImpl(index, settings.to_dict(), START.to_dict())


def ev(cid: str) -> Event:
    return Event(uuid.uuid4().hex, cid, "page_view", time.time(), None, {}, None, None)


def customers_in(partitions: set[int], n: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        cid = f"c{i}"
        if partition_of(cid, PARTITIONS) in partitions:
            out.append(cid)
        i += 1
    return out


async def test_handed_off_partitions_move_with_history_dedupe_and_decisions(
    tmp_path: Path,
) -> None:
    old, new = make(tmp_path, 0), make(tmp_path, 1)
    moving, staying = {1, 2, 5}, {0, 3, 4, 6, 7}
    movers, stayers = customers_in(moving, 5), customers_in(staying, 3)
    events = [ev(c) for c in movers + stayers]
    await old.apply_events(events, None, 1)
    decided = await old.decide([DecideRequest(movers[0], ("web",))], None, 1)
    await old.delete_profile(movers[1], 1)  # an erasure tombstone that must travel
    nxt = after_move(START, Move(0, 1, tuple(sorted(moving))))

    export = await old.hand_off(nxt.to_dict(), sorted(moving), 1)
    assert isinstance(export, bytes)
    # The old owner stops serving them at once, and says so with its new epoch.
    assert await old.get_profile(movers[0], 1) == StaleEpoch(2)
    assert await old.get_profile(movers[0], 2) == StaleEpoch(2)
    assert (await old.get_profile(stayers[0], 2))["customer_id"] == stayers[0]
    # The new owner does not serve them before it imported them.
    assert await new.get_profile(movers[0], 2) == StaleEpoch(1)
    assert await old.hand_off(nxt.to_dict(), sorted(moving), 1) == export  # asked again
    assert await new.take_over(nxt.to_dict(), sorted(moving), export) == {"shard": 1, "epoch": 2}
    assert await new.take_over(nxt.to_dict(), sorted(moving), export) == {"shard": 1, "epoch": 2}
    assert await old.acknowledge_hand_off(2) is True
    old.durable.close()
    new.durable.close()

    # Both come back from their journals as they were.
    old, new = make(tmp_path, 0), make(tmp_path, 1)
    assert old.ownership.owned == frozenset(staying) and not old.handoff.outbox
    assert new.ownership.owned == frozenset(moving)
    for cid in movers[2:]:
        assert (await new.get_profile(cid, 2))["counters"]["page_view"]["1h"] == 1
    assert (await new.get_decision(decided[0].decision_id))["customer_id"] == movers[0]
    assert await new.get_profile(movers[1], 2) is None  # erased before the move
    kept = [m for m in movers if m != movers[1]]
    again = await new.apply_events([e for e in events if e.customer_id in kept], None, 2)
    assert again["applied"] == 0 and again["duplicates"] == len(kept)
    via_cache = DecideRequest(movers[1], ("web",), via_cache=True)
    assert await new.decide([via_cache], None, 2) == [Erased(movers[1])]
    assert sorted(await old.customer_ids()) == sorted(stayers)


async def test_a_map_that_moves_partitions_is_refused_without_a_hand_off(tmp_path: Path) -> None:
    old = make(tmp_path, 0)
    nxt = after_move(START, Move(0, 1, (3,)))
    refused = await old.adopt_map(nxt.to_dict())
    assert isinstance(refused, Failed) and "hand-off" in refused.message
    wrong = await old.hand_off(nxt.to_dict(), [3, 4], 1)  # 4 is not given to shard 1
    assert isinstance(wrong, Failed)
    assert old.ownership.epoch == 1
