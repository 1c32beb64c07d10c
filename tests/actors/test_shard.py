"""The shard's behaviour without Ray: recovery, refusal, degraded storage."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from actors.decisions import DecisionsMade
from actors.replies import ShardUnavailable, StaleEpoch
from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.decisioning.record import DecisionRecord, to_builtins
from models.decisioning.request import DecideRequest
from models.partitioning import PartitionMap
from models.settings import load_settings

PMAP = PartitionMap.initial(8, 1).to_dict()


def make(data_dir: Path) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PMAP)


def ev(cid: str, etype: str = "page_view", **attrs) -> Event:
    return Event(uuid.uuid4().hex, cid, etype, time.time(), None, attrs, None, None)


async def test_state_survives_a_new_instance_on_the_same_directory(tmp_path: Path) -> None:
    shard = make(tmp_path)
    batch = [ev("a"), ev("a"), ev("b", "profile_update", age=30)]
    assert await shard.apply_events(batch, None, 1) == {
        "applied": 3,
        "duplicates": 0,
        "moved": [],
        "erased": [],
    }
    out = await shard.decide([DecideRequest("a", ("web",))], None, 1)
    did = out[0].decision_id
    assert (await shard.delete_profile("b", 1)) is True
    shard.durable.close()

    again = make(tmp_path)
    assert again.durable.recovery["replayed_records"] == 3
    assert (await again.get_profile("a", 1))["counters"]["page_view"]["1h"] == 2
    assert await again.get_profile("b", 1) is None
    assert (await again.get_decision(did))["customer_id"] == "a"
    assert await again.apply_events(batch[:2], None, 1) == {
        "applied": 0,
        "duplicates": 2,
        "moved": [],
        "erased": [],
    }


async def test_snapshot_then_recovery_uses_it(tmp_path: Path) -> None:
    shard = make(tmp_path)
    await shard.apply_events([ev("a") for _ in range(5)], None, 1)
    snap = await shard.snapshot()
    assert snap["profiles"] == 1
    await shard.apply_events([ev("a")], None, 1)
    shard.durable.close()
    again = make(tmp_path)
    assert again.durable.recovery["replayed_records"] == 1
    assert (await again.get_profile("a", 1))["counters"]["page_view"]["1h"] == 6


async def test_wrong_epoch_is_refused_as_stale(tmp_path: Path) -> None:
    shard = make(tmp_path)
    assert await shard.apply_events([ev("a")], None, 7) == StaleEpoch(1)


async def test_unusable_data_directory_refuses_everything(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    shard = make(blocker)
    assert shard.durable.degraded and "data directory unusable" in shard.durable.degraded
    assert isinstance(await shard.apply_events([ev("a")], None, 1), ShardUnavailable)
    assert isinstance(await shard.get_profile("a", 1), ShardUnavailable)
    assert isinstance(await shard.snapshot(), ShardUnavailable)


async def test_one_keyed_request_twice_in_one_call_is_decided_once(tmp_path: Path) -> None:
    # A campaign batch re-sent after a lost answer may carry a key twice (or a
    # client retries inside one batch): one decision, one impression, one log entry.
    shard = make(tmp_path)
    req = DecideRequest("a", ("email",), idempotency_key="campaign:7")
    other = DecideRequest("b", ("email",), idempotency_key="campaign:7")  # same key, other customer
    out = await shard.decide([req, other, req], None, 1)
    assert out[0].decision_id == out[2].decision_id != out[1].decision_id
    assert len(shard.engine.log) == 2
    again = await shard.decide([req], None, 1)  # and a later call answers the same
    assert again[0].decision_id == out[0].decision_id


async def test_a_keyed_repeat_is_not_answered_before_the_decision_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call logs its decision, then awaits the group commit (a slow
    # fsync, in a thread). A retry with the same key arriving meanwhile must
    # wait for that commit too: a crash before it would lose the decision the
    # retry was told about.
    shard = make(tmp_path)
    journal = shard.durable.journal
    writing, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def gated_fsync(fd: int) -> None:
        writing.set()
        release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr("actors.journal.os.fsync", gated_fsync)
    journal.slow_disk = True  # the next group commit is written in a thread
    req = DecideRequest("a", ("web",), idempotency_key="retry:1")
    first = asyncio.create_task(shard.decide([req], None, 1))
    try:
        assert await asyncio.to_thread(writing.wait, 5)  # the first call's commit is under way
        second = asyncio.create_task(shard.decide([req], None, 1))
        await asyncio.sleep(0.1)
        assert not first.done()
        assert not second.done()  # not acknowledged while the commit is still running
        assert journal.commits == 0
    finally:
        release.set()
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert journal.commits == 1
    assert a[0].decision_id == b[0].decision_id
    assert len(shard.engine.log) == 1


async def test_decisions_replay_from_both_journal_forms_without_the_explain_trace(
    tmp_path: Path,
) -> None:
    shard = make(tmp_path)
    (explained,) = await shard.decide([DecideRequest("a", ("web",), explain=True)], None, 1)
    assert explained.trace and explained.offers
    # A decision as journals written before the packed form hold it: a list of dicts.
    legacy = msgspec.structs.replace(explained, decision_id=DecisionRecord.new_id(),
                                     customer_id="b", trace=None)  # fmt: skip
    shard.durable.append(DecisionsMade(legacy.ts, [to_builtins(legacy)]))
    await shard.durable.commit()
    shard.durable.close()

    again = make(tmp_path)
    assert again.durable.recovery["replayed_records"] == 2
    logged = again.engine.log.get(explained.decision_id)
    assert logged is not None and logged.trace is None
    assert logged.offers == explained.offers and logged.candidates == explained.candidates
    assert again.engine.log.get(legacy.decision_id) == legacy
    for cid in ("a", "b"):  # the impressions replayed with either form
        history = (await again.get_profile(cid, 1))["history"]
        assert [h["offer_id"] for h in history] == [o.offer_id for o in explained.offers]


async def test_a_retried_event_for_a_profile_being_merged_counts_once(tmp_path: Path) -> None:
    # A page view applied to an anonymous profile is retried while that profile is
    # being handed over to the account (identify). The retry is sent on to the
    # account only once the hand-over is delivered, so the account's merged ring of
    # seen ids recognises it: one page view, not two.
    shard = make(tmp_path)
    x = ev("anon-1")
    assert (await shard.apply_events([x], None, 1))["applied"] == 1
    send = shard._send_merge

    async def slow_send(*args):
        await asyncio.sleep(0.2)  # the survivor's shard is a slow actor call away
        return await send(*args)

    shard._send_merge = slow_send
    moving = asyncio.create_task(shard.move_out("anon-1", "acct-1", 1))
    await asyncio.sleep(0.05)  # the hand-over is decided, its delivery in flight
    answer = await shard.apply_events([x], None, 1)
    assert answer["moved"] == [[0, "acct-1"]]
    # What the replica then does: send the event on to the survivor.
    again = await shard.apply_events([x._replace(customer_id="acct-1")], None, 1)
    assert again["duplicates"] == 1 and again["applied"] == 0
    await moving
    assert (await shard.get_profile("acct-1", 1))["counters"]["page_view"]["1h"] == 1


async def test_a_snapshot_holds_the_decision_log_as_of_its_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is packed in the writer's thread after the loop went on: an outcome
    attributed meanwhile is in the journal after the snapshot, so the snapshot
    must not hold it too, or recovery would attribute it twice."""
    from actors import journal as journal_mod

    shard = make(tmp_path)
    out = await shard.decide([DecideRequest("a", ("web",))], None, 1)
    did = out[0].decision_id
    go = threading.Event()
    packing = threading.Event()
    pack_state = journal_mod.pack_state

    def held(state: dict) -> bytes:
        packing.set()
        assert go.wait(10)
        return pack_state(state)

    monkeypatch.setattr(journal_mod, "pack_state", held)
    snap = asyncio.create_task(shard.durable.snapshot())
    await asyncio.to_thread(packing.wait, 10)  # captured; the thread waits to pack
    answer = Event(uuid.uuid4().hex, "a", "response", time.time(), "web", {"outcome": "clicked"},
                   out[0].offers[0].offer_id if out[0].offers else None, did)  # fmt: skip
    await shard.apply_events([answer], None, 1)
    assert len(shard.engine.log.get(did).outcomes) == 1
    go.set()
    await snap
    shard.durable.close()

    again = make(tmp_path)
    assert again.durable.recovery["replayed_records"] == 1  # the response, after the snapshot
    assert len(again.engine.log.get(did).outcomes) == 1


async def test_the_loop_runs_while_a_snapshot_is_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``msgpack.packb`` of the whole state held the GIL from start to end (about
    60 ms for 20,000 profiles and 10,000 decisions): no decision could run. Packed
    piece by piece, the loop waits at most a GIL switch interval (5 ms) at a time."""
    from actors import journal as journal_mod

    shard = make(tmp_path)
    blob = shard.profiles.store.get_or_new("x").pack()
    for i in range(60_000):
        shard.profiles.store.put_blob(f"c{i}", blob)
    for i in range(0, 6_000, 500):
        await shard.decide([DecideRequest(f"c{j}", ("web",)) for j in range(i, i + 500)], None, 1)
    spans: list[tuple[float, float]] = []
    pack_state = journal_mod.pack_state

    def timed(state: dict) -> bytes:
        t0 = time.perf_counter()
        try:
            return pack_state(state)
        finally:
            spans.append((t0, time.perf_counter()))

    monkeypatch.setattr(journal_mod, "pack_state", timed)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await shard.durable.snapshot()
    task.cancel()
    ((start, end),) = spans
    inside = [start] + [t for t in ticks if start < t < end] + [end]
    longest = max(b - a for a, b in itertools.pairwise(inside))
    print(f"packed in {(end - start) * 1e3:.1f} ms, longest pause {longest * 1e3:.1f} ms")
    assert longest < (end - start) / 2
