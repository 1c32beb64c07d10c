"""``DecideCoalescer`` against an in-process region: batching, re-routing, failures, bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.replies import Expired, Moved, StaleEpoch
from models.decisioning.request import DecideRequest
from models.errors import Unavailable
from serving.coalesce import DecideCoalescer


@dataclass(frozen=True)
class Decided:
    """A stand-in decision: who it is for, and which shard and map epoch made it."""

    customer_id: str
    shard: int
    epoch: int


@dataclass
class Call:
    shard: int
    epoch: int
    customers: list[str]


Answer = Callable[["FakeRegion", int, list[DecideRequest]], Any]


def decide_all(region: FakeRegion, shard: int, requests: list[DecideRequest]) -> Any:
    return [Decided(r.customer_id, shard, region.epoch) for r in requests]


@dataclass
class FakeRegion:
    """What the coalescer needs from ``ShardRegion``, with calls held and answers scripted.

    Customers are named ``"<shard>:<name>"``. ``epoch`` is the region's map,
    ``current`` the shards' one: like real shards, a call routed with another
    epoch, or carrying a customer the shard does not own under ``current``,
    is answered ``StaleEpoch``. Each epoch moves every customer ``shift``
    shards further on.
    """

    shards: int = 2
    answer: Answer = decide_all
    epoch: int = 1
    current: int = 1
    shift: int = 0
    calls: list[Call] = field(default_factory=list)
    refreshes: list[int] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def owner(self, customer_id: str, epoch: int) -> int:
        home = int(customer_id.split(":", 1)[0])
        return (home + self.shift * (epoch - 1)) % self.shards

    def shard_of(self, customer_id: str) -> int:
        return self.owner(customer_id, self.epoch)

    async def decide_on(
        self,
        shard: int,
        requests: list[DecideRequest],
        deadlines: list[float] | None,
        timeout_s: float,
    ) -> tuple[int, Any]:
        epoch = self.epoch
        self.calls.append(Call(shard, epoch, [r.customer_id for r in requests]))
        await self.gate.wait()
        owned = all(self.owner(r.customer_id, self.current) == shard for r in requests)
        if epoch != self.current or not owned:
            return epoch, StaleEpoch(self.current)
        return epoch, self.answer(self, shard, requests)

    async def refresh(self, seen_epoch: int) -> None:
        self.refreshes.append(seen_epoch)
        if self.epoch <= seen_epoch:
            self.epoch = self.current

    def note_moved(self, old: str, new: str) -> None:
        self.moves.append((old, new))

    def batch_sizes(self) -> list[int]:
        return [len(c.customers) for c in self.calls]


def req(customer_id: str) -> DecideRequest:
    return DecideRequest(customer_id, ("web",))


def later(seconds: float = 5.0) -> float:
    return time.time() + seconds


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def start(coalescer: DecideCoalescer, *customers: str) -> list[asyncio.Task]:
    return [asyncio.create_task(coalescer.decide(req(c), later())) for c in customers]


async def test_requests_arriving_during_a_call_go_together_in_the_next_call() -> None:
    region = FakeRegion()
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_batch=64, max_calls=1)
    first = start(coalescer, "0:a")
    await until(lambda: len(region.calls) == 1)
    rest = start(coalescer, "0:b", "0:c", "0:d", "0:e")
    await asyncio.sleep(0)
    assert region.batch_sizes() == [1]  # held back while the first call is out

    region.gate.set()
    answers = await asyncio.gather(*first, *rest)

    assert region.batch_sizes() == [1, 4]
    assert [a.customer_id for a in answers] == ["0:a", "0:b", "0:c", "0:d", "0:e"]
    assert coalescer.batches == 2 and coalescer.requests == 5


async def test_a_lone_request_is_sent_at_once() -> None:
    region = FakeRegion()
    coalescer = DecideCoalescer(region)
    assert await coalescer.decide(req("1:solo"), later()) == Decided("1:solo", 1, 1)
    assert region.batch_sizes() == [1]


async def test_shards_are_batched_separately() -> None:
    region = FakeRegion()
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_calls=1)
    tasks = start(coalescer, "0:a", "1:a", "0:b", "1:b", "0:c")
    await until(lambda: len(region.calls) == 2)
    region.gate.set()
    answers = await asyncio.gather(*tasks)

    assert [(a.customer_id, a.shard) for a in answers] == [
        ("0:a", 0), ("1:a", 1), ("0:b", 0), ("1:b", 1), ("0:c", 0)
    ]  # fmt: skip
    assert sorted((c.shard, len(c.customers)) for c in region.calls) == [
        (0, 1), (0, 2), (1, 1), (1, 1)
    ]  # fmt: skip


async def test_no_call_carries_more_than_max_batch_requests() -> None:
    region = FakeRegion()
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_batch=3, max_calls=1)
    tasks = start(coalescer, *(f"0:{i}" for i in range(8)))
    await until(lambda: len(region.calls) == 1)
    region.gate.set()
    answers = await asyncio.gather(*tasks)

    assert region.batch_sizes() == [1, 3, 3, 1]
    assert [a.customer_id for a in answers] == [f"0:{i}" for i in range(8)]


async def test_no_more_than_max_calls_are_in_flight_per_shard() -> None:
    region = FakeRegion()
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_batch=2, max_calls=2)
    tasks = start(coalescer, *(f"0:{i}" for i in range(7)))
    await until(lambda: len(region.calls) == 2)
    for _ in range(10):
        await asyncio.sleep(0)
    assert region.batch_sizes() == [1, 1]
    region.gate.set()
    await asyncio.gather(*tasks)
    assert region.batch_sizes() == [1, 1, 2, 2, 1]


async def test_requests_refused_as_stale_are_resent_to_the_new_owner_after_a_refresh() -> None:
    region = FakeRegion(shift=1)
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_calls=1)
    tasks = start(coalescer, "0:x", "0:a", "0:b", "0:c")
    await until(lambda: len(region.calls) == 1)
    region.current = 2  # rebalanced while the first call is out: shard 1 owns them now
    region.gate.set()
    answers = await asyncio.gather(*tasks)

    everyone = ["0:a", "0:b", "0:c", "0:x"]
    assert answers == [Decided(c, 1, 2) for c in ("0:x", "0:a", "0:b", "0:c")]
    assert region.refreshes and region.epoch == 2
    refused = [c for call in region.calls if call.shard == 0 for c in call.customers]
    resent = [c for call in region.calls if call.shard == 1 for c in call.customers]
    assert sorted(refused) == sorted(resent) == everyone
    # Both refused calls were whole batches, each re-sent in full.
    assert [len(call.customers) for call in region.calls if call.shard == 0] == [1, 3]


async def test_a_merged_profile_is_decided_for_the_survivor() -> None:
    def anon_was_merged(region: FakeRegion, shard: int, requests: list) -> Any:
        return [Moved("1:known") if r.customer_id == "0:anon" else Decided(r.customer_id, shard, 1)
                for r in requests]  # fmt: skip

    region = FakeRegion(answer=anon_was_merged)
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_calls=1)
    tasks = start(coalescer, "0:first", "0:anon", "0:other")
    await until(lambda: len(region.calls) == 1)
    region.gate.set()
    answers = await asyncio.gather(*tasks)

    assert answers == [Decided("0:first", 0, 1), Decided("1:known", 1, 1), Decided("0:other", 0, 1)]
    assert region.moves == [("0:anon", "1:known")]
    sent = [c for call in region.calls for c in call.customers]
    assert sorted(sent) == ["0:anon", "0:first", "0:other", "1:known"]


async def test_expired_answers_are_returned_to_the_caller() -> None:
    region = FakeRegion(answer=lambda _r, _s, requests: [Expired() for _ in requests])
    coalescer = DecideCoalescer(region)
    assert await coalescer.decide(req("0:late"), later()) == Expired()


async def test_a_failed_call_fails_only_the_requests_it_carried() -> None:
    failures = iter([True])

    def first_call_fails(region: FakeRegion, shard: int, requests: list) -> Any:
        if next(failures, False):
            raise Unavailable("shard 0 is not answering", code="shard_unavailable")
        return decide_all(region, shard, requests)

    region = FakeRegion(answer=first_call_fails)
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_calls=1)
    failed = start(coalescer, "0:a")
    await until(lambda: len(region.calls) == 1)
    waiting = start(coalescer, "0:b", "0:c")
    elsewhere = start(coalescer, "1:x")
    region.gate.set()

    with pytest.raises(Unavailable, match="not answering"):
        await failed[0]
    assert [a.customer_id for a in await asyncio.gather(*waiting, *elsewhere)] == [
        "0:b", "0:c", "1:x"
    ]  # fmt: skip
    # The shard's slot was given back: later requests still go through.
    assert (await coalescer.decide(req("0:d"), later())).customer_id == "0:d"


async def test_a_full_queue_refuses_at_once_as_overloaded() -> None:
    region = FakeRegion()
    region.gate.clear()
    coalescer = DecideCoalescer(region, max_calls=1, max_queue=2)
    tasks = start(coalescer, "0:a")
    await until(lambda: len(region.calls) == 1)
    tasks += start(coalescer, "0:b", "0:c")
    await asyncio.sleep(0)

    with pytest.raises(Unavailable) as refused:
        await coalescer.decide(req("0:d"), later())
    assert refused.value.code == "overloaded"
    # Another shard's queue is not full.
    tasks += start(coalescer, "1:a")
    region.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [a.customer_id for a in answers] == ["0:a", "0:b", "0:c", "1:a"]


async def test_a_map_that_never_settles_ends_in_unavailable() -> None:
    def rebalance_again(region: FakeRegion, shard: int, requests: list) -> Any:
        region.current += 1
        return StaleEpoch(region.current)

    region = FakeRegion(answer=rebalance_again, shift=1)
    coalescer = DecideCoalescer(region)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(coalescer.decide(req("0:a"), later()), 5)
    assert 1 < len(region.calls) <= 10


async def test_merges_that_never_end_end_in_unavailable() -> None:
    region = FakeRegion(answer=lambda _r, _s, requests: [Moved("0:" + r.customer_id)
                                                         for r in requests])  # fmt: skip
    coalescer = DecideCoalescer(region)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(coalescer.decide(req("0:a"), later()), 5)
    assert 1 < len(region.calls) <= 10


def test_limits_must_be_positive() -> None:
    for bad in ({"max_batch": 0}, {"max_calls": 0}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            DecideCoalescer(FakeRegion(), **bad)


async def test_one_call_that_waited_out_a_restart_does_not_make_the_shard_look_slow() -> None:
    region = FakeRegion()
    coalescer = DecideCoalescer(region, max_calls=1)
    region.gate.clear()
    slow = start(coalescer, "0:restart")
    await until(lambda: len(region.calls) == 1)
    await asyncio.sleep(0.5)  # the call retried until the restarted shard answered
    region.gate.set()
    await asyncio.gather(*slow)
    for name in "abc":  # the shard is fast again
        await coalescer.decide(req(f"0:{name}"), later())
    region.gate.clear()
    held = start(coalescer, "0:in-flight")  # a call in flight: the estimate is consulted
    await until(lambda: len(region.calls) == 5)
    # A running mean (weight 0.2) would still say 0.5 x 0.8^3 ~ 0.1 s here and shed
    # every 50 ms decide to the fallback; the median of recent calls says "fast".
    assert coalescer.expected_wait_s("0:next") < 0.02
    region.gate.set()
    await asyncio.gather(*held)


async def test_a_shard_that_stays_slow_is_measured_slow_and_failures_are_not_measured() -> None:
    def fails(region: FakeRegion, shard: int, requests: list) -> Any:
        raise Unavailable("shard 0 is not answering", code="shard_unavailable")

    region = FakeRegion(answer=fails)
    coalescer = DecideCoalescer(region, max_calls=1)
    with pytest.raises(Unavailable):
        await coalescer.decide(req("0:x"), later())
    assert coalescer.round_trip_s(0) == 0.0  # nothing answered: nothing measured

    region.answer = decide_all
    for name in "abcde":
        region.gate.clear()
        task = start(coalescer, f"0:{name}")
        await asyncio.sleep(0.03)
        region.gate.set()
        await asyncio.gather(*task)
    assert coalescer.round_trip_s(0) >= 0.03
