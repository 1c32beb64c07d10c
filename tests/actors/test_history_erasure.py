"""Erasing a customer's history while the shard serves: off the event loop, in order.

The history files hold every decision ever made (no retention by default), so
reading them on the shard's event loop stopped every decision for the time of
an erasure. These tests slow the file work down (a slow disk) and check that
the loop keeps running, that rows written meanwhile stay, that retention does
not delete a file under the rewrite, and that the journal order survives a
restart when an event for the same customer arrives mid-erasure.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import history as history_module
from actors.history import InteractionHistory
from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest
from models.partitioning import PartitionMap
from models.settings import load_settings


def record(cid: str, ts: float) -> DecisionRecord:
    return DecisionRecord(decision_id=uuid.uuid4().hex, customer_id=cid, ts=ts,
                          channels=["web"], catalog_version="c", model_version="m",
                          offers=[])  # fmt: skip


def customers(h: InteractionHistory) -> list[str]:
    out, _ = h.page("decision", 0.0, time.time() + 10, None, 10_000)
    return [r["customer_id"] for r in out]


def slow_files(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[str]:
    """Reading each history file takes ``seconds`` longer (a slow disk), wherever it
    happens; returns the names of the threads that read them."""
    threads: list[str] = []
    real = Path.read_bytes

    def slow(path: Path) -> bytes:
        if path.name.startswith(history_module.PREFIX):
            threads.append(threading.current_thread().name)
            time.sleep(seconds)
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", slow)
    return threads


class Ticker:
    """Counts 5 ms ticks of the running event loop (none while something blocks it)."""

    def __init__(self, on_third: Callable[[], None] | None = None) -> None:
        self.n = 0
        self.on_third = on_third
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.n += 1
            if self.n == 3 and self.on_third is not None:
                self.on_third()

    def stop(self) -> None:
        self.task.cancel()


async def test_the_loop_keeps_running_and_later_rows_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = InteractionHistory(tmp_path, file_bytes=300)
    for i in range(12):
        h.add_decisions([record("gone" if i % 3 == 0 else f"keep{i}", 1000.0 + i)], None)
        h.flush()
    assert len(h.files()) >= 3
    threads = slow_files(monkeypatch, 0.05)

    def write_during() -> None:  # a row written while the erasure runs is newer: it stays
        h.add_decisions([record("gone", 3000.0)], None)
        h.flush()

    ticks = Ticker(on_third=write_during)
    removed = await h.erase_async("gone")
    ticks.stop()
    assert removed == 4
    assert set(threads) - {threading.main_thread().name}, "closed files are read in a thread"
    assert ticks.n >= 5, ticks.n  # the event loop ran while the files were rewritten
    assert customers(h).count("gone") == 1  # the row written during the erasure
    assert sorted(c for c in customers(h) if c != "gone") == sorted(
        f"keep{i}" for i in range(12) if i % 3
    )


async def test_retention_skips_a_round_instead_of_deleting_a_file_being_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = InteractionHistory(tmp_path, file_bytes=300, retention_s=3600.0)
    for i in range(8):
        h.add_decisions([record("gone" if i == 0 else f"c{i}", 1000.0 + i)], None)
        h.flush()
    slow_files(monkeypatch, 0.1)
    erasing = asyncio.create_task(h.erase_async("gone"))
    await asyncio.sleep(0.05)  # the thread holds the first file now
    assert h.prune(time.time() + 7200) == 0  # everything is "old", yet nothing goes
    assert await erasing == 1
    assert h.prune(time.time() + 7200) > 0  # the next round deletes as usual
    for p in h.files():
        assert b'"gone"' not in p.read_bytes()


def make(data_dir: Path) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PartitionMap.initial(8, 1).to_dict())


def ev(cid: str) -> Event:
    return Event(uuid.uuid4().hex, cid, "page_view", time.time(), None, {}, None, None)


async def test_an_event_arriving_mid_erasure_is_kept_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The open file too, in a thread (raising=False: the attribute is new with the thread).
    monkeypatch.setattr(history_module, "ERASE_INLINE_BYTES", 0, raising=False)
    shard = make(tmp_path)
    await shard.apply_events([ev("x"), ev("x")], None, 1)
    await shard.decide([DecideRequest("x", ("web",)), DecideRequest("y", ("web",))], None, 1)
    slow_files(monkeypatch, 0.2)
    ticks = Ticker()
    erasing = asyncio.create_task(shard.delete_profile("x", 1))
    await asyncio.sleep(0.05)  # erased in memory and journalled; the files are being rewritten
    assert (await shard.apply_events([ev("x")], None, 1))["applied"] == 1
    assert await erasing is True
    ticks.stop()
    assert ticks.n >= 20, ticks.n  # 0.2 s of slow disk did not stop the shard's loop
    live = await shard.get_profile("x", 1)
    assert live is not None and live["counters"]["page_view"]["1h"] == 1
    shard.durable.close()
    shard.history.close()
    again = make(tmp_path)  # replays the erasure, then the event that came after it
    recovered = await again.get_profile("x", 1)
    assert recovered is not None and recovered["counters"]["page_view"]["1h"] == 1
    for p in (tmp_path / "shard-0" / "history").iterdir():
        assert b'"x"' not in p.read_bytes()
    again.durable.close()


async def test_a_customer_known_only_to_the_history_is_erased_and_stays_erased(
    tmp_path: Path,
) -> None:
    shard = make(tmp_path)
    await shard.decide([DecideRequest("old", ("web",))], None, 1)
    shard.engine.log.erase("old")  # evicted from the log; the profile was never stored
    shard.profiles.store.delete("old")
    assert await shard.delete_profile("old", 1) is True  # rows on disk count
    lsn = shard.durable.journal.lsn
    assert await shard.delete_profile("never-seen", 1) is False
    assert shard.durable.journal.lsn == lsn  # no file names it: nothing journalled
    shard.durable.close()
    shard.history.close()
    again = make(tmp_path)
    for p in (tmp_path / "shard-0" / "history").iterdir():
        assert b'"old"' not in p.read_bytes()
    again.durable.close()
