"""The identity shard without Ray: claim, repoint, release, forget, recovery, degraded disk."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.identity import IdentityShardImpl
from actors.replies import ShardUnavailable
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
