"""A shard asks the coordinator for its peers with a bound: a silent coordinator fails the step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from actors import shard as shard_module
from actors.shard import ProfileShardImpl
from models.partitioning import PartitionMap
from models.settings import load_settings


def make(data_dir: Path) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PartitionMap.initial(8, 1).to_dict())


class _Silent:
    """A coordinator handle whose topology call never answers (a restarting actor)."""

    class topology:  # mirrors the Ray handle's method attribute
        @staticmethod
        def remote() -> asyncio.Future:
            return asyncio.get_running_loop().create_future()


async def test_a_coordinator_that_does_not_answer_fails_the_lookup_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_module.ray, "get_actor", lambda *a, **k: _Silent())
    monkeypatch.setattr(shard_module, "STEP_TIMEOUT_S", 0.2)
    shard = make(tmp_path)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(shard._topo(), 3.0)  # the old, unbounded call: 3 s
    assert time.monotonic() - started < 2.0
    # The merge of learned evidence, which asks for peers every round, skips the round.
    shard.learning.models.local = {"x@web": object()}  # anything to merge
    await asyncio.wait_for(shard._merge_learning(), 2.0)
    shard.durable.close()
