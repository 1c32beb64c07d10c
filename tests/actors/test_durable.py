"""``DurableState`` without Ray: typed records, recovery, snapshots, degraded storage."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.durable import RECORD_TYPES, DurableState, JournalRecord, journal_record
from models.errors import Unavailable
from models.settings import load_settings

# The registry is global and refuses a kind twice: register once, at import,
# under kinds no production record uses.


@journal_record("test_put")
@dataclasses.dataclass(frozen=True, slots=True)
class Put(JournalRecord):
    key: str
    value: int


@journal_record("test_del")
@dataclasses.dataclass(frozen=True, slots=True)
class Delete(JournalRecord):
    key: str


class KeyValueOwner:
    """The smallest owner DurableState can keep: a dict."""

    def __init__(self, directory: Path) -> None:
        self.data: dict[str, int] = {}
        settings = load_settings(None, {"data_dir": str(directory)})
        self.durable = DurableState(
            "test owner",
            directory,
            settings,
            self,
            {Put: self._put, Delete: lambda r: self.data.pop(r.key, None)},
        )

    def _put(self, rec: Put) -> None:
        self.data[rec.key] = rec.value

    def reset_state(self) -> None:
        self.data = {}

    def load_snapshot(self, state: dict) -> None:
        self.data = dict(state["data"])

    def snapshot_state(self) -> dict:
        return {"data": dict(self.data)}

    def snapshot_sync(self) -> None:
        return None

    async def put(self, key: str, value: int) -> None:
        self.data[key] = value
        await self.durable.record(Put(key, value))

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)
        await self.durable.record(Delete(key))


@pytest.fixture
def owners() -> Iterator[list[KeyValueOwner]]:
    made: list[KeyValueOwner] = []
    yield made
    for owner in made:
        owner.durable.close()


@pytest.fixture
def open_owner(owners: list[KeyValueOwner]):
    def open_(directory: Path) -> KeyValueOwner:
        owner = KeyValueOwner(directory)
        owners.append(owner)
        owner.durable.recover()
        return owner

    return open_


async def test_state_is_rebuilt_from_the_journal_alone(tmp_path: Path, open_owner) -> None:
    first = open_owner(tmp_path)
    await first.put("a", 1)
    await first.put("b", 2)
    await first.put("a", 3)
    await first.delete("b")
    first.durable.close()

    again = open_owner(tmp_path)
    assert again.data == {"a": 3}
    assert again.durable.recovered and again.durable.degraded is None
    assert again.durable.recovery["replayed_records"] == 4


async def test_recovery_loads_the_snapshot_and_replays_only_the_tail(
    tmp_path: Path, open_owner
) -> None:
    first = open_owner(tmp_path)
    for i in range(5):
        await first.put(f"k{i}", i)
    snap = await first.durable.snapshot()
    assert snap["bytes"] > 0
    await first.put("k0", 100)
    await first.delete("k4")
    first.durable.close()

    again = open_owner(tmp_path)
    assert again.data == {"k0": 100, "k1": 1, "k2": 2, "k3": 3}
    assert again.durable.recovery["replayed_records"] == 2


async def test_a_record_of_unknown_kind_is_skipped_and_the_rest_recovered(
    tmp_path: Path, open_owner
) -> None:
    first = open_owner(tmp_path)
    await first.put("before", 1)
    # Written by some other (newer or retired) record type this process does not know.
    first.durable.journal.append("test_kind_nobody_registered", "x", 1)
    await first.durable.commit()
    await first.put("after", 2)
    first.durable.close()

    again = open_owner(tmp_path)
    assert again.durable.recovered and again.durable.degraded is None
    assert again.data == {"before": 1, "after": 2}
    assert again.durable.recovery["replayed_records"] == 2


async def test_unusable_data_directory_refuses_writes(tmp_path: Path, owners) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data directory should be")
    owner = KeyValueOwner(blocker / "state")
    owners.append(owner)

    assert owner.durable.recover() is False
    assert not owner.durable.recovered
    assert "data directory unusable" in (owner.durable.degraded or "")
    with pytest.raises(Unavailable) as refused:
        owner.durable.check()
    assert refused.value.code == "storage_unavailable"
    with pytest.raises(Unavailable):
        await owner.durable.record(Put("a", 1))
    with pytest.raises(Unavailable):
        await owner.durable.snapshot()


async def test_directory_that_becomes_usable_is_recovered_on_the_next_tick(
    tmp_path: Path, owners, open_owner
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    owner = KeyValueOwner(blocker / "state")
    owners.append(owner)
    assert owner.durable.recover() is False

    blocker.unlink()
    owner.durable.tick()
    assert owner.durable.recovered and owner.durable.degraded is None
    owner.durable.check()
    await owner.put("a", 1)
    owner.durable.close()
    assert open_owner(blocker / "state").data == {"a": 1}


def test_registering_a_kind_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="test_put"):

        @journal_record("test_put")
        @dataclasses.dataclass(frozen=True, slots=True)
        class Impostor(JournalRecord):
            key: str

    assert RECORD_TYPES["test_put"] is Put
