"""``ShardRegion`` over the same-node wire when the connection breaks mid-call.

A real shard (``ProfileShardImpl``, in process) serves its real socket
(``actors/wire.py``); the replica's link reaches it through a proxy that cuts
the connection once the shard starts answering: the call ran, its reply is
lost. What a replica may do then depends on the call: events are deduplicated
by id and are sent again; a decide is not (it would decide twice).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.shard import ProfileShardImpl
from actors.wire import WIRE_METHODS, WireLink, WireServer, socket_dir
from models.customer.events import Event
from models.decisioning.request import DecideRequest
from models.errors import Unavailable
from models.partitioning import PartitionMap
from models.settings import Settings, load_settings
from serving.region import ShardRegion

PMAP = PartitionMap.initial(8, 1)


class InProcessHandle:
    """Where the region's Ray calls go in these tests: ``handle.m.remote(*args)`` runs
    ``m`` on the in-process shard (the same shard the wire reaches); calls are noted."""

    def __init__(self, shard: ProfileShardImpl) -> None:
        self.shard = shard
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name not in WIRE_METHODS:
            raise AttributeError(name)
        method = getattr(self.shard, name)

        class Remote:
            @staticmethod
            def remote(*args: Any) -> Any:
                self.calls.append(name)
                return method(*args)

        return Remote


class CuttingProxy:
    """Passes a connection on to the shard's socket and cuts it (both sides) at
    the first byte of the shard's answer."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.path = str(socket_dir() / f"test-cut-{os.getpid()}.sock")
        self.cuts = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_unix_server(self._pipe, self.path)
        return self.path

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)

        async def forward() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)

        forwarding = asyncio.create_task(forward())
        try:
            await asyncio.wait_for(up_reader.read(1), 10)  # the shard answers: the call ran
            self.cuts += 1
        finally:
            forwarding.cancel()
            writer.transport.abort()
            up_writer.transport.abort()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        Path(self.path).unlink(missing_ok=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, {"data_dir": str(tmp_path), "partitions": 8, "shards": 1})


@pytest.fixture
async def shard(settings: Settings) -> AsyncIterator[ProfileShardImpl]:
    s = ProfileShardImpl(0, settings.to_dict(), PMAP.to_dict())
    yield s
    if s.wire is not None:
        s.wire.close()
    s.durable.close()


async def wire_of(shard: ProfileShardImpl) -> str:
    shard.wire = WireServer(
        f"test-region-{os.getpid()}", {name: getattr(shard, name) for name in WIRE_METHODS}
    )
    return await shard.wire.start()


def region_over(settings: Settings, shard: ProfileShardImpl, link_path: str) -> ShardRegion:
    """A replica's region whose one shard is ``shard``, linked to it at ``link_path``."""
    region = ShardRegion(settings)
    region.map = PMAP
    region.shards = [InProcessHandle(shard)]
    region._links[0] = WireLink(link_path)
    return region


@pytest.fixture
async def cut(
    settings: Settings, shard: ProfileShardImpl
) -> AsyncIterator[tuple[CuttingProxy, ShardRegion]]:
    """A region linked to ``shard`` through a proxy that cuts every call's answer."""
    proxy = CuttingProxy(await wire_of(shard))
    region = region_over(settings, shard, await proxy.start())
    yield proxy, region
    proxy.close()


async def test_a_decide_cut_off_after_it_was_sent_is_not_decided_again(
    cut: tuple[CuttingProxy, ShardRegion], shard: ProfileShardImpl
) -> None:
    proxy, region = cut
    cid = f"cut-{uuid.uuid4().hex[:8]}"

    with pytest.raises(Unavailable) as err:  # the ingress answers with the fallback
        await region.decide_on(0, [DecideRequest(cid, ("web",))], None, 5.0)

    assert err.value.code == "shard_unavailable"
    assert proxy.cuts == 1
    assert region.shards[0].calls == []  # not sent again through Ray
    assert len(shard.engine.log.for_customer(cid)) == 1  # the shard decided once


async def test_events_cut_off_after_they_were_sent_are_sent_again_and_counted_once(
    cut: tuple[CuttingProxy, ShardRegion], shard: ProfileShardImpl
) -> None:
    proxy, region = cut
    cid = f"cut-{uuid.uuid4().hex[:8]}"
    events = [
        Event(uuid.uuid4().hex, cid, "page_view", time.time(), None, {}, None, None)
        for _ in range(3)
    ]

    applied, duplicates, _ = await region.apply_events(events)

    assert proxy.cuts == 1
    assert region.shards[0].calls == ["apply_events"]  # sent again, through Ray
    assert (applied, duplicates) == (0, 3)  # the first sending had applied them
    assert (await shard.get_profile(cid, 1))["counters"]["page_view"]["1h"] == 3


async def test_a_decide_the_wire_could_not_send_goes_through_ray_once(
    settings: Settings, shard: ProfileShardImpl
) -> None:
    gone = str(socket_dir() / f"test-gone-{os.getpid()}.sock")  # a shard that restarted
    region = region_over(settings, shard, gone)
    cid = f"gone-{uuid.uuid4().hex[:8]}"

    _, answers = await region.decide_on(0, [DecideRequest(cid, ("web",))], None, 5.0)

    assert [a.customer_id for a in answers] == [cid]
    assert region.shards[0].calls == ["decide_packed"]
    assert region.wire_calls == 0 and region.ray_calls == 1
    assert len(shard.engine.log.for_customer(cid)) == 1
