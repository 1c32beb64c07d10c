"""``InteractionHistory`` on a real directory: rows, pages, rotation, recovery, erasure."""

from __future__ import annotations

import os
import time
from pathlib import Path

from actors.history import InteractionHistory
from models.decisioning.record import ChosenOffer, DecisionRecord


def record(cid: str, ts: float, offer: str | None = "card") -> DecisionRecord:
    offers = (
        []
        if offer is None
        else [ChosenOffer(offer_id=offer, group=offer, channel="web", treatment="t", value=10.0)]
    )
    return DecisionRecord(
        decision_id=DecisionRecord.new_id(), customer_id=cid, ts=ts, channels=["web"],
        catalog_version="v1", model_version="m1", offers=offers,
        candidates=[{"offer_id": "card", "channel": "web", "treatment": "t", "propensity": 0.2,
                     "priority": 2.0, "value": 10.0, "cost": 0.0}],
        experiment="exp", arm="a", policy="full",
    )  # fmt: skip


def all_rows(h: InteractionHistory, kind: str = "decision", limit: int = 3) -> list[dict]:
    out, cursor = [], None
    for _ in range(1000):
        rows, cursor = h.page(kind, 0.0, 1e10, cursor, limit)
        out += rows
        if cursor is None:
            return out
    raise AssertionError("paging never ended")


def test_rows_page_back_in_order_across_rotated_files(tmp_path: Path) -> None:
    h = InteractionHistory(tmp_path, file_bytes=2000)
    t0 = time.time()
    recs = [record(f"c{i}", t0 + i) for i in range(20)]
    for r in recs:
        h.add_decisions([r], None)
        h.flush()
    assert len(h.files()) > 3  # rotated by size
    rows = all_rows(h)
    assert [r["decision_id"] for r in rows] == [r.decision_id for r in recs]
    assert rows[0]["chosen"][0]["value"] == 10.0 and rows[0]["arm"] == "a"
    some, _ = h.page("decision", t0 + 5, t0 + 10, None, 100)
    assert [r["ts"] for r in some] == [t0 + 5 + i for i in range(5)]


def test_outcomes_are_rows_of_their_own_with_the_offer_value_when_positive(
    tmp_path: Path,
) -> None:
    h = InteractionHistory(tmp_path)
    r = record("c1", 1000.0)
    h.add_decisions([r], None)
    h.add_outcome(r, "card", "accepted", 1001.0, True)
    h.add_outcome(r, "card", "ignored", 1002.0, False)
    h.flush()
    out = all_rows(h, "outcome")
    assert [(o["outcome"], o["positive"], o["value"]) for o in out] == [
        ("accepted", True, 10.0), ("ignored", False, 0.0)]  # fmt: skip
    assert len(all_rows(h)) == 1


def test_recovery_writes_missing_decisions_once_and_skips_those_on_disk(tmp_path: Path) -> None:
    h = InteractionHistory(tmp_path)
    written, lost = record("c1", 1000.0), record("c2", 1001.0)
    h.add_decisions([written], None)
    h.flush()
    h.close()
    again = InteractionHistory(tmp_path)  # a restarted shard replays its journal
    again.begin_recovery(0.0)
    for r in (written, lost, lost):
        again.add_recovered(r)
    again.add_outcome(written, "card", "accepted", 1003.0, True)
    again.recovered()
    ids = [r["decision_id"] for r in all_rows(again)]
    assert sorted(ids) == sorted([written.decision_id, lost.decision_id])
    again.begin_recovery(0.0)  # replaying the same outcome again writes nothing
    again.add_outcome(written, "card", "accepted", 1003.0, True)
    again.recovered()
    assert len(all_rows(again, "outcome")) == 1


def test_erasure_rewrites_every_file_without_the_customer(tmp_path: Path) -> None:
    h = InteractionHistory(tmp_path, file_bytes=1500)
    for i in range(12):
        h.add_decisions([record("gone" if i % 3 == 0 else f"keep{i}", 1000.0 + i)], None)
        h.flush()
    assert h.erase("gone") == 4
    for p in tmp_path.iterdir():
        assert b"gone" not in p.read_bytes()
    assert len(all_rows(h)) == 8
    h.add_decisions([record("after", 2000.0)], None)  # the open file was rewritten: still works
    h.flush()
    assert len(all_rows(h)) == 9


def test_retention_deletes_closed_files_older_than_it(tmp_path: Path) -> None:
    h = InteractionHistory(tmp_path, file_bytes=1500, retention_s=3600.0)
    for i in range(8):
        h.add_decisions([record(f"c{i}", 1000.0 + i)], None)
        h.flush()
    files = h.files()
    old = time.time() - 7200
    for p in files[:2]:
        os.utime(p, (old, old))
    assert h.prune(time.time()) == 2
    assert h.files() == files[2:]
