"""``rtim export profiles`` against the real server: JSONL(.gz) and Parquet, segments, bad rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
from tests_support import auth_headers

from serving.bulk.export import EXIT_OK, EXIT_USAGE, ExportOptions, run_export


def preload(server: str, cohort: str, n: int) -> dict[str, int]:
    ages = {f"{cohort}-{i}": 20 + i for i in range(n)}
    events = [
        {"event_id": f"{cid}-p", "customer_id": cid, "type": "profile_update",
         "attributes": {"age": age, "cohort": cohort}}
        for cid, age in ages.items()
    ]  # fmt: skip
    events += [{"event_id": f"{cid}-v", "customer_id": cid, "type": "page_view"} for cid in ages]
    r = httpx.post(
        f"{server}/v1/events", json={"events": events}, timeout=30, headers=auth_headers()
    )
    assert r.status_code == 200, r.text
    return ages


def cohort_rule(cohort: str) -> str:
    return json.dumps({"fact": "attr.cohort", "op": "==", "value": cohort})


def test_segment_exports_to_gzipped_jsonl_exactly_as_the_api_shows_profiles(
    server: str, tmp_path: Path
) -> None:
    ages = preload(server, "exp-a", 23)
    out = tmp_path / "profiles.jsonl.gz"
    options = ExportOptions(server, out, "jsonl", cohort_rule("exp-a"), page_size=4, quiet=True)
    code, summary = run_export(options)
    assert code == EXIT_OK and summary["profiles"] == 23
    with gzip.open(out, "rt") as f:
        exported = {p["customer_id"]: p for p in map(json.loads, f)}
    assert {cid: p["attributes"]["age"] for cid, p in exported.items()} == ages
    live = httpx.get(f"{server}/v1/profiles/exp-a-5", timeout=30, headers=auth_headers()).json()
    assert exported["exp-a-5"]["counters"] == live["counters"]
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_export_has_one_row_per_profile_with_json_columns(
    server: str, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    ages = preload(server, "exp-b", 9)
    out = tmp_path / "profiles.parquet"
    code, summary = run_export(
        ExportOptions(server, out, "parquet", cohort_rule("exp-b"), page_size=2, quiet=True)
    )
    assert code == EXIT_OK and summary["profiles"] == 9
    rows = pq.read_table(out).to_pylist()
    assert {r["customer_id"]: json.loads(r["attributes"])["age"] for r in rows} == ages
    assert all(json.loads(r["counters"])["page_view"]["30d"] == 1 for r in rows)


def test_whole_export_includes_everyone_and_a_bad_rule_writes_nothing(
    server: str, tmp_path: Path
) -> None:
    ages = preload(server, "exp-c", 5)
    out = tmp_path / "all.jsonl"
    code, _ = run_export(ExportOptions(server, out, "jsonl", None, page_size=500, quiet=True))
    assert code == EXIT_OK
    with out.open() as f:
        ids = [json.loads(line)["customer_id"] for line in f]
    assert set(ages) <= set(ids) and len(ids) == len(set(ids))
    bad = tmp_path / "bad.jsonl"
    code, _ = run_export(ExportOptions(server, bad, "jsonl", "{fact: attr.age, op: '=~'}"))
    assert code == EXIT_USAGE and not bad.exists()
