"""The identity shard without Ray: claim, repoint, release, forget, recovery, degraded disk,
and identity partitions handed off to another identity shard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.identity import IdentityShardImpl
from actors.replies import Failed, ShardUnavailable, StaleEpoch
from models.partitioning import Move, PartitionMap, after_move, partition_of
from models.settings import load_settings

CK1, CK2, CK3 = "cookie:c1", "cookie:c2", "cookie:c3"
ACCT = "account:a1"
E = 1  # the identity-map epoch of a shard created without a map


def close(shard: IdentityShardImpl) -> None:
    """Stop the shard's timer and release its journal, as an actor exit would."""
    timer = getattr(shard, "timer", None)
    if timer is not None:
        timer.cancel()
    with contextlib.suppress(Exception):
        shard.durable.close()


@pytest.fixture
def open_shard() -> Iterator[Callable[[Path], IdentityShardImpl]]:
    made: list[IdentityShardImpl] = []

    def open_(data_dir: Path) -> IdentityShardImpl:
        settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
        shard = IdentityShardImpl(0, settings.to_dict(), None)
        made.append(shard)
        return shard

    yield open_
    for shard in made:
        close(shard)


async def test_first_claim_wins_and_a_later_claim_by_another_profile_loses(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    assert await shard.claim([CK1, ACCT], "p1", now, E) == {CK1: "p1", ACCT: "p1"}
    assert await shard.claim([CK1, CK2], "p2", now, E) == {CK1: "p1", CK2: "p2"}
    assert await shard.resolve([CK1, CK2, ACCT, CK3], E) == {
        CK1: "p1",
        CK2: "p2",
        ACCT: "p1",
        CK3: None,
    }


async def test_claiming_keys_a_profile_already_holds_changes_nothing(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1], "p1", now, E)
    assert await shard.claim([CK1], "p1", now + 1, E) == {CK1: "p1"}
    assert await shard.resolve([CK1], E) == {CK1: "p1"}


async def test_repointing_a_profile_moves_all_its_keys(tmp_path: Path, open_shard) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1, CK2], "anon", now, E)
    await shard.claim([ACCT], "known", now, E)
    assert sorted(await shard.repoint_profile("anon", "known", E)) == [CK1, CK2]
    assert await shard.resolve([CK1, CK2, ACCT], E) == {CK1: "known", CK2: "known", ACCT: "known"}
    assert await shard.repoint_profile("anon", "known", E) == []


async def test_released_keys_are_unmapped_and_can_be_claimed_again(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1, CK2], "p1", now, E)
    assert await shard.release([CK1, CK3], None, E) == [CK1]
    assert await shard.resolve([CK1, CK2], E) == {CK1: None, CK2: "p1"}
    assert await shard.claim([CK1], "p2", now, E) == {CK1: "p2"}


async def test_forgetting_a_profile_drops_every_identifier_it_held(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1, ACCT], "p1", now, E)
    await shard.claim([CK2], "p2", now, E)
    assert sorted(await shard.forget("p1", E)) == [ACCT, CK1]
    assert await shard.resolve([CK1, ACCT, CK2], E) == {CK1: None, ACCT: None, CK2: "p2"}
    assert await shard.records_of(["p1"], E) == []
    assert await shard.forget("p1", E) == []


async def test_table_survives_a_new_instance_on_the_same_directory(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1, CK2], "anon", now, E)
    await shard.claim([ACCT], "known", now, E)
    await shard.claim([CK3], "gone", now, E)
    await shard.repoint_profile("anon", "known", E)
    await shard.release([CK2], None, E)
    await shard.forget("gone", E)
    close(shard)

    again = open_shard(tmp_path)
    assert await again.resolve([CK1, CK2, CK3, ACCT], E) == {
        CK1: "known",
        CK2: None,
        CK3: None,
        ACCT: "known",
    }
    records = await again.records_of(["known"], E)
    assert sorted(r[0] for r in records) == [ACCT, CK1]
    assert {r[1] for r in records} == {"known"}


async def test_table_survives_recovery_from_a_snapshot_and_the_journal_after_it(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    now = time.time()
    await shard.claim([CK1, ACCT], "p1", now, E)
    snap = await shard.snapshot()
    assert not isinstance(snap, ShardUnavailable) and snap["identifiers"] == 2
    await shard.claim([CK2], "p2", now, E)
    await shard.repoint_profile("p2", "p1", E)
    await shard.release([CK1], None, E)
    close(shard)

    again = open_shard(tmp_path)
    assert await again.resolve([CK1, CK2, ACCT], E) == {CK1: None, CK2: "p1", ACCT: "p1"}


async def test_first_seen_time_is_kept_through_repoint_and_recovery(
    tmp_path: Path, open_shard
) -> None:
    shard = open_shard(tmp_path)
    await shard.claim([CK1], "anon", 1000.0, E)
    await shard.claim([ACCT], "known", 2000.0, E)
    await shard.repoint_profile("anon", "known", E)
    close(shard)

    again = open_shard(tmp_path)
    seen = {r[0]: r[2] for r in await again.records_of(["known"], E)}
    assert seen == {CK1: 1000.0, ACCT: 2000.0}


async def test_unusable_data_directory_answers_shard_unavailable(
    tmp_path: Path, open_shard
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    shard = open_shard(blocker)
    now = time.time()
    replies = await asyncio.gather(
        shard.claim([CK1], "p1", now, E),
        shard.resolve([CK1], E),
        shard.records_of(["p1"], E),
        shard.repoint_profile("p1", "p2", E),
        shard.release([CK1], None, E),
        shard.forget("p1", E),
        shard.snapshot(),
    )
    assert all(isinstance(r, ShardUnavailable) for r in replies), replies
    assert "data directory unusable" in replies[0].reason
    assert (await shard.ping())["degraded"]


async def test_identity_shard_recovers_once_its_directory_becomes_usable(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("x")
    settings = load_settings(None, {"data_dir": str(blocker), "partitions": 8, "shards": 1})
    shard = IdentityShardImpl(0, settings.to_dict(), None)
    await shard.ping()  # as the coordinator does at start
    assert isinstance(await shard.resolve(["cookie:a"], E), ShardUnavailable)
    blocker.unlink()
    deadline = time.monotonic() + 10
    while shard.durable.degraded and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await shard.resolve(["cookie:a"], E) == {"cookie:a": None}
    shard.timer.cancel()
    shard.durable.close()


# -- identity partitions moving between two shards (actors/handoff.py) ----------------------


def two_shards(data_dir: Path, partitions: int = 8) -> tuple[dict, list[IdentityShardImpl]]:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": partitions})
    pmap = PartitionMap.initial(partitions, 2).to_dict()
    return pmap, [IdentityShardImpl(i, settings.to_dict(), None, pmap) for i in range(2)]


def keys_on(pmap: dict, shard: int, n: int) -> list[str]:
    owners = pmap["owners"]
    keys = (f"cookie:m{i}" for i in range(10_000))
    return [k for k in keys if owners[partition_of(k, len(owners))] == shard][:n]


async def test_a_moved_identity_partition_is_served_by_its_new_shard_only_and_survives_restarts(
    tmp_path: Path,
) -> None:
    pmap, (a, b) = two_shards(tmp_path)
    keys = keys_on(pmap, 0, 6)
    for i, k in enumerate(keys):
        assert await a.claim([k], f"p{i % 2}", 100.0 + i, 1) == {k: f"p{i % 2}"}
    moving = sorted({partition_of(k, 8) for k in keys[:3]})
    staying = [k for k in keys if partition_of(k, 8) not in moving]
    travelling = [k for k in keys if partition_of(k, 8) in moving]
    nxt = after_move(PartitionMap.from_dict(pmap), Move(0, 1, tuple(moving))).to_dict()
    assert await b.adopt_map(nxt) == Failed(
        "map_refused", "a map that moves this shard's partitions needs a hand-off"
    )

    export = await a.hand_off(nxt, moving, 1)
    assert isinstance(export, bytes)
    assert await a.hand_off(nxt, moving, 1) == export  # repeated: the same answer
    # The old owner refuses the moved keys at every epoch; the new one until it took over.
    assert await a.resolve(travelling, 2) == StaleEpoch(2)
    assert await a.resolve(travelling, 1) == StaleEpoch(2)
    assert await b.resolve(travelling, 2) == StaleEpoch(1)
    assert await b.records_of(["p0"], 2) == StaleEpoch(1)  # a whole-profile call too
    assert await b.take_over(nxt, moving, export) == {"shard": 1, "epoch": 2}
    assert await b.take_over(nxt, moving, export) == {"shard": 1, "epoch": 2}  # idempotent
    assert await a.acknowledge_hand_off(2) is True

    owners = {k: f"p{keys.index(k) % 2}" for k in keys}
    assert await b.resolve(travelling, 2) == {k: owners[k] for k in travelling}
    assert await a.resolve(staying, 2) == {k: owners[k] for k in staying}
    # Every link is held once, first-seen kept.
    held = [*(await a.records_of(["p0", "p1"], 2)), *(await b.records_of(["p0", "p1"], 2))]
    assert sorted(r[0] for r in held) == sorted(keys)
    assert {r[0]: r[2] for r in held} == {k: 100.0 + keys.index(k) for k in keys}

    # A repoint now reaches the moved links on their new shard.
    assert sorted(await b.repoint_profile("p0", "p9", 2)) == sorted(
        k for k in travelling if owners[k] == "p0"
    )
    for shard in (a, b):
        close(shard)
    _, (a2, b2) = two_shards(tmp_path)  # restarted: created with the old map, journals replayed
    assert (await a2.ping())["epoch"] == (await b2.ping())["epoch"] == 2
    assert (await a2.ping())["outbox"] == []
    assert await a2.resolve(travelling, 2) == StaleEpoch(2)
    expected = {k: "p9" if owners[k] == "p0" else owners[k] for k in travelling}
    assert await b2.resolve(travelling, 2) == expected
    for shard in (a2, b2):
        close(shard)


async def links_of_p_moving(
    tmp_path: Path, n: int
) -> tuple[IdentityShardImpl, IdentityShardImpl, list[str], tuple[dict, list[int]]]:
    """Two shards; ``n`` links of profile "p" on shard 0; the move of their partitions to 1."""
    pmap, (a, b) = two_shards(tmp_path)
    keys = keys_on(pmap, 0, n)
    await a.claim(keys, "p", 1.0, 1)
    moving = sorted({partition_of(k, 8) for k in keys})
    nxt = after_move(PartitionMap.from_dict(pmap), Move(0, 1, tuple(moving))).to_dict()
    return a, b, keys, (nxt, moving)


async def test_an_identity_shard_killed_after_the_hand_off_still_has_the_export(
    tmp_path: Path,
) -> None:
    a, b, keys, (nxt, moving) = await links_of_p_moving(tmp_path, 4)
    export = await a.hand_off(nxt, moving, 1)
    close(a)
    close(b)
    _, (a2, b2) = two_shards(tmp_path)  # both restarted before the take-over
    assert await a2.hand_off(nxt, moving, 1) == export  # the coordinator asks again
    assert await b2.take_over(nxt, moving, export) == {"shard": 1, "epoch": 2}
    assert await b2.resolve(keys, 2) == dict.fromkeys(keys, "p")
    assert await a2.acknowledge_hand_off(2) is True
    for shard in (a2, b2):
        close(shard)


async def test_handed_off_links_leave_the_old_owners_disk_soon_after_the_acknowledgement(
    tmp_path: Path,
) -> None:
    a, b, keys, (nxt, moving) = await links_of_p_moving(tmp_path, 3)
    await b.take_over(nxt, moving, await a.hand_off(nxt, moving, 1))
    await b.forget("p", 2)  # erased on the new owner

    def on_old_owners_disk() -> bool:
        files = (tmp_path / "identity-0").iterdir()
        return any(keys[0].encode() in f.read_bytes() for f in files if f.is_file())

    assert on_old_owners_disk()  # in the hand-off record, until it is acknowledged
    assert await a.acknowledge_hand_off(2) is True
    deadline = time.monotonic() + 15
    while on_old_owners_disk():
        assert time.monotonic() < deadline, "the export stayed in the old owner's journal"
        await asyncio.sleep(0.5)
    for shard in (a, b):
        close(shard)
