"""A shard's interaction history through the actor's own code (no Ray): context, recovery."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.customer.profile import Profile
from models.decisioning.request import DecideRequest
from models.partitioning import PartitionMap
from models.settings import load_settings

PMAP = PartitionMap.initial(8, 1).to_dict()


def make(data_dir: Path) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PMAP)


def rows(shard: ProfileShardImpl, kind: str = "decision") -> list[dict]:
    assert shard.history is not None
    out, _ = shard.history.page(kind, 0.0, time.time() + 10, None, 10_000)
    return out


async def test_the_row_context_is_the_profile_just_before_the_decision(tmp_path: Path) -> None:
    shard = make(tmp_path)
    ev = Event(uuid.uuid4().hex, "a", "profile_update", time.time(), None, {"age": 41}, None, None)
    await shard.apply_events([ev], None, 1)
    before = await shard.get_profile("a", 1)
    (record,) = await shard.decide([DecideRequest("a", ("web",), context={"device": "mobile"})],
                                   None, 1)  # fmt: skip
    (row,) = rows(shard)
    assert row["decision_id"] == record.decision_id and row["chosen"]
    profile = Profile.unpack("a", base64.b64decode(row["context"]["profile"]))
    assert profile.attrs["age"] == 41 and profile.history == before["history"] == []
    assert (await shard.get_profile("a", 1))["history"]  # the impression came after
    assert row["context"]["request"] == {"channels": ["web"], "context": {"device": "mobile"},
                                         "limit": 1, "placement": None}  # fmt: skip


async def test_rows_the_disk_lost_come_back_from_the_journal_once(tmp_path: Path) -> None:
    shard = make(tmp_path)
    first = await shard.decide([DecideRequest("a", ("web",)), DecideRequest("b", ("web",))],
                               None, 1)  # fmt: skip
    shard.durable.close()
    shard.history.close()
    for p in (tmp_path / "shard-0" / "history").iterdir():  # the OS never wrote them
        p.write_bytes(b"")
    again = make(tmp_path)
    got = rows(again)
    assert sorted(r["decision_id"] for r in got) == sorted(r.decision_id for r in first)
    assert all(r["context"] is None for r in got)  # the journal does not keep contexts
    third = make(tmp_path)  # recovering again adds nothing
    assert len(rows(third)) == 2


async def test_an_erased_customer_is_not_brought_back_by_recovery(tmp_path: Path) -> None:
    shard = make(tmp_path)
    await shard.decide([DecideRequest("gone", ("web",)), DecideRequest("kept", ("web",))],
                       None, 1)  # fmt: skip
    assert await shard.delete_profile("gone", 1) is True
    shard.durable.close()
    shard.history.close()
    again = make(tmp_path)
    assert [r["customer_id"] for r in rows(again)] == ["kept"]
    for p in (tmp_path / "shard-0" / "history").iterdir():
        assert b'"gone"' not in p.read_bytes()


async def test_a_fallback_arriving_after_the_erasure_is_not_written(tmp_path: Path) -> None:
    from models.decisioning.record import DecisionRecord

    shard = make(tmp_path)
    await shard.decide([DecideRequest("gone", ("web",))], None, 1)
    late = DecisionRecord.fallback_for("gone", ["web"], [], "v", time.time())
    kept = DecisionRecord.fallback_for("kept", ["web"], [], "v", time.time())
    assert await shard.delete_profile("gone", 1) is True
    assert await shard.record_fallbacks([late, kept]) == 1
    assert [r["customer_id"] for r in rows(shard)] == ["kept"]
    assert await shard.get_decision(late.decision_id) is None


async def test_every_row_of_a_batch_carries_its_profile_as_stored_before_the_batch(
    tmp_path: Path,
) -> None:
    shard = make(tmp_path)
    ev = Event(uuid.uuid4().hex, "a", "profile_update", time.time(), None, {"age": 41}, None, None)
    await shard.apply_events([ev], None, 1)
    stored = shard.profiles.store.blob("a")
    assert stored is not None
    # "a" twice in one call (the second row still shows no impression), "new" unknown so far.
    reqs = [DecideRequest(c, ("web",)) for c in ("a", "new", "a")]
    records = await shard.decide(reqs, None, 1)
    by_id = {r["decision_id"]: r for r in rows(shard)}
    contexts = [by_id[r.decision_id]["context"]["profile"] for r in records]
    # The string the rows held when the profile was packed again for each row.
    assert contexts[0] == contexts[2] == base64.b64encode(stored).decode()
    again = Profile.unpack("a", base64.b64decode(contexts[0]))
    assert base64.b64encode(again.pack()).decode() == contexts[0]
    assert again.attrs["age"] == 41 and again.history == []
    assert shard.profiles.store.blob("a") != stored  # the impressions came after
    fresh = Profile.unpack("new", base64.b64decode(contexts[1]))
    assert fresh == Profile("new")
