"""The campaign's rule segment: pages of every shard taken in turn (no Ray, a fake server)."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import pytest

from serving.bulk.campaign import OUT_COLUMNS, CampaignError, CampaignOptions, CampaignRun


class FakeSegments:
    """``/v1/segments/members`` over fixed per-shard member lists, ``limit`` ids a page."""

    def __init__(self, members: list[list[str]], fail_shard: int | None = None) -> None:
        self.members = members
        self.fail_shard = fail_shard
        self.calls: list[tuple[int, Any]] = []

    async def post(self, path: str, payload: dict, msgpack_answer: bool = False) -> tuple[int, Any]:
        assert path == "/v1/segments/members" and msgpack_answer
        shard, after, limit = payload["shard"], payload["after"], payload["limit"]
        self.calls.append((shard, after))
        await asyncio.sleep(0)
        if shard == self.fail_shard and after is not None:
            return 400, {"error": {"message": "no"}}
        ids = self.members[shard]
        start = 0 if after is None else ids.index(after) + 1
        page = ids[start : start + limit]
        nxt = page[-1] if start + limit < len(ids) else None
        return 200, {"ids": page, "next": nxt, "shards": len(self.members)}


def _run(tmp_path: Path, page_size: int = 3) -> CampaignRun:
    opts = CampaignOptions(
        url="http://127.0.0.1:1", api_key=None, segment='{"fact": "attr.age", "op": ">=", '
        '"value": 1}', channels=["email"], campaign_id="c", out=tmp_path / "out.csv",
        page_size=page_size,
    )  # fmt: skip
    run = CampaignRun(opts)
    run.prepare()
    return run


async def _collect(run: CampaignRun, sender: FakeSegments, stop_after: int | None = None) -> list:
    out = []
    gen = run._segment(sender)  # type: ignore[arg-type]
    async for cid in gen:
        out.append(cid)
        if stop_after is not None and len(out) >= stop_after:
            await gen.aclose()
            break
    return out


def test_members_of_all_shards_come_in_turn_each_once(tmp_path: Path) -> None:
    members = [[f"a{i:02d}" for i in range(7)], [f"b{i:02d}" for i in range(4)], []]
    ids = asyncio.run(_collect(_run(tmp_path), FakeSegments(members)))
    assert sorted(ids) == sorted(members[0] + members[1])
    # While both shards have members, every second id is the other shard's
    # (shard after shard would put a whole batch on one shard).
    assert [c[0] for c in ids[:8]] == ["a", "b"] * 4
    assert ids[8:] == ["a04", "a05", "a06"]


def test_a_refused_next_page_stops_the_run_and_leaves_no_task_behind(tmp_path: Path) -> None:
    from serving.bulk.transport import ImportAborted

    sender = FakeSegments([[f"a{i}" for i in range(9)], [f"b{i}" for i in range(9)]], 1)

    async def go() -> None:
        with pytest.raises(ImportAborted):
            await _collect(_run(tmp_path), sender)
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == []

    asyncio.run(go())


def test_stopping_early_cancels_the_pages_fetched_ahead(tmp_path: Path) -> None:
    sender = FakeSegments([[f"a{i}" for i in range(9)], [f"b{i}" for i in range(9)]])

    async def go() -> list:
        ids = await _collect(_run(tmp_path), sender, stop_after=2)
        await asyncio.sleep(0)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return ids

    assert asyncio.run(go()) == ["a0", "b0"]


def test_an_output_file_with_a_malformed_row_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OUT_COLUMNS)
        w.writerow(["c", "x1", "d1", "", "", "", "", "", "", "", ""])
        w.writerow(["c", "x2"])
    with pytest.raises(CampaignError, match="line 3"):
        _run(tmp_path)
