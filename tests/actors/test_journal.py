"""The journal: group commit, recovery, torn tails, snapshots and compaction."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import msgpack
import pytest

from actors.journal import Deferred, Journal, PackedItems, Piecewise, pack_state, read_records
from models.errors import Unavailable


async def write(j: Journal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        j.append("ev", i)
    await j.commit()


async def test_records_survive_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    state, recs = j.recover()
    assert state is None and list(recs) == []
    await write(j, 5)
    j.close()
    state, recs = Journal(tmp_path).recover()
    assert [r[2] for r in recs] == [0, 1, 2, 3, 4]


async def test_concurrent_commits_are_grouped(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()

    async def one(i: int) -> None:
        j.append("ev", i)
        await j.commit()

    await asyncio.gather(*(one(i) for i in range(200)))
    assert j.commits < 200  # fewer writes than callers
    j.close()
    _, recs = Journal(tmp_path).recover()
    assert sorted(r[2] for r in recs) == list(range(200))


async def test_a_slow_disk_moves_commits_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 30 ms fsync (a busy disk) must not stop the actor's loop: after one slow
    # commit the next ones are written in a thread, and a commit still returns
    # only once its records are on disk.
    import os
    import time

    real_fsync = os.fsync
    monkeypatch.setattr("actors.journal.os.fsync", lambda fd: (time.sleep(0.03), real_fsync(fd))[1])
    j = Journal(tmp_path)
    j.recover()
    await write(j, 1)  # inline: the loop stood still for the fsync
    assert j.slow_disk
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        for _ in range(40):
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    for i in range(3):
        await write(j, 1, start=10 + i)
        assert (tmp_path / j.seg_path(j.segment).name).stat().st_size > 0
    await tick
    assert max(gaps) < 0.025, max(gaps)  # never blocked for a whole 30 ms fsync
    j.close()
    _, recs = Journal(tmp_path).recover()
    assert [r[2] for r in recs] == [0, 10, 11, 12]


async def test_close_during_a_threaded_write_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    real_fsync = os.fsync
    monkeypatch.setattr("actors.journal.os.fsync", lambda fd: (time.sleep(0.03), real_fsync(fd))[1])
    j = Journal(tmp_path)
    j.recover()
    j.slow_disk = True
    pending = asyncio.create_task(write(j, 2))
    await asyncio.sleep(0.01)  # the write is in its thread
    j.close()  # must not pull the file out from under it
    await pending  # acknowledged: on disk
    assert j._fd is None and j.bytes_written > 0
    _, recs = Journal(tmp_path).recover()
    assert [r[2] for r in recs] == [0, 1]


async def test_a_quick_disk_writes_inline_again(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="off")
    j.recover()
    j.slow_disk = True  # as after a slow commit
    for i in range(20):  # the first hand-off also starts the thread pool: allow a few
        await write(j, 1, start=i)
        if not j.slow_disk:
            break
    assert not j.slow_disk  # the writes were quick, thread hand-off included


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
async def test_torn_tail_is_skipped_and_logged(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    j = Journal(tmp_path)
    j.recover()
    await write(j, 10)
    seg = j.seg_path(j.segment)
    j.close()
    data = seg.read_bytes()
    if damage == "truncate":
        seg.write_bytes(data[:-3])
    else:
        seg.write_bytes(data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:])
    with caplog.at_level(logging.WARNING, logger="rtim.journal"):
        _, recs = Journal(tmp_path).recover()
        got = [r[2] for r in recs]
    assert got == list(range(9))
    assert "torn or corrupt tail" in caplog.text


async def test_snapshot_compacts_and_recovery_skips_covered_records(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    await write(j, 3)
    upto = j.rotate()
    state = {"lsn": j.lsn, "items": [0, 1, 2]}
    j.append("ev", 3)  # appended after the snapshot's instant
    await j.commit()
    j.write_snapshot(upto, state)
    assert j.snapshots() == [upto]
    assert all(n > upto for n in j.segments())
    j.close()
    state2, recs = Journal(tmp_path).recover()
    assert state2["items"] == [0, 1, 2]
    assert [r[2] for r in recs] == [3]


async def test_write_failure_raises_and_is_never_acknowledged(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    await write(j, 1)
    j.rotate()
    nxt = j.seg_path(j._next_segment)
    nxt.symlink_to("/dev/full")  # the next segment's writes fail with ENOSPC
    j.append("ev", 1)
    with pytest.raises(Unavailable, match="journal write failed"):
        await j.commit()
    j.append("ev", 2)
    with pytest.raises(Unavailable):
        await j.commit()


def test_unusable_directory_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        Journal(blocker / "shard-0").recover()


def test_read_records_of_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "journal-00000001.log"
    f.write_bytes(b"")
    assert read_records(f) == ([], 0)


def test_pack_state_writes_what_packb_writes() -> None:
    """Packed piece by piece (the loop runs between pieces), byte for byte the same."""
    big_map = {f"c{i}": bytes([i % 256]) * (i % 50) for i in range(1000)}
    big_list = [{"i": i, "x": [i, str(i)]} for i in range(700)]
    packed = [msgpack.packb({"d": i}) for i in range(300)]
    state = {
        "v": 1,
        "profiles": Piecewise(big_map),
        "small": {"a": 1},
        "decisions": Deferred(lambda: PackedItems(packed)),
        "rows": Piecewise(big_list),
        "live": dict(big_map),  # not the snapshot's own: packed in one call
        "few": [1, 2],
    }
    plain = dict(state, profiles=big_map, rows=big_list, decisions=[{"d": i} for i in range(300)])
    assert pack_state(state) == msgpack.packb(plain, use_bin_type=True)
    assert msgpack.unpackb(pack_state(state), strict_map_key=False) == plain


def test_a_live_dict_is_packed_in_one_call_while_the_loop_changes_it() -> None:
    """Only a Piecewise container (the snapshot's own copy) is iterated item by item;
    a live one changed meanwhile by the loop's thread must not break the snapshot."""
    live = {f"k{i}": i for i in range(200_000)}  # tens of ms to iterate: GIL switches
    stop = threading.Event()

    def churn() -> None:  # the size differs every other turn (where threads switch)
        i = 0
        while not stop.is_set():
            if i % 2:
                live.pop("extra", None)
            else:
                live["extra"] = i
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(5):
            msgpack.unpackb(pack_state({"live": live, "own": Piecewise(list(range(300)))}))
    finally:
        stop.set()
        t.join()
