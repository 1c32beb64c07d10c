"""``rtim campaign run`` against the real server: rule and file segments, resume, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from tests_support import auth_headers

from serving.bulk.campaign import EXIT_OK, EXIT_USAGE, CampaignOptions, run_campaign


def preload(server: str, cohort: str, n: int) -> list[str]:
    """``n`` customers of one cohort, ages 20..79 spread; returns those aged 40 or more."""
    events = [
        {
            "event_id": f"{cohort}-{i}",
            "customer_id": f"{cohort}-{i}",
            "type": "profile_update",
            "attributes": {"age": 20 + (i * 7) % 60, "cohort": cohort, "income": 50_000 + i},
        }
        for i in range(n)
    ]
    r = httpx.post(
        f"{server}/v1/events", json={"events": events}, timeout=30, headers=auth_headers()
    )
    assert r.status_code == 200, r.text
    return [e["customer_id"] for e in events if e["attributes"]["age"] >= 40]


def rule_for(cohort: str) -> str:
    return json.dumps(
        {
            "all": [
                {"fact": "attr.cohort", "op": "==", "value": cohort},
                {"fact": "attr.age", "op": ">=", "value": 40},
            ]
        }
    )


def opts(server: str, out: Path, segment: str, **kw: object) -> CampaignOptions:
    base: dict = {
        "url": server,
        "segment": segment,
        "channels": ["email", "outbound_call"],
        "campaign_id": out.stem,
        "out": out,
        "batch_size": 7,
        "concurrency": 3,
        "page_size": 5,
        "quiet": True,
    }
    base.update(kw)
    return CampaignOptions(**base)  # type: ignore[arg-type]


def read_out(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def history_sizes(server: str, cids: list[str]) -> dict[str, int]:
    with httpx.Client(base_url=server, timeout=30, headers=auth_headers()) as c:
        return {cid: len(c.get(f"/v1/profiles/{cid}").json()["history"]) for cid in cids}


def test_rule_segment_decides_each_member_once_and_a_rerun_decides_nobody(
    server: str, tmp_path: Path
) -> None:
    members = preload(server, "cmp-a", 60)
    out = tmp_path / "spring.csv"
    code, summary = run_campaign(opts(server, out, rule_for("cmp-a")))
    assert code == EXIT_OK
    rows = read_out(out)
    assert sorted(r["customer_id"] for r in rows) == sorted(members)
    assert all(r["campaign_id"] == "spring" and r["decision_id"] for r in rows)
    assert summary.customers == len(members) == summary.decided_this_run
    assert sum(summary.per_channel.values()) + summary.no_message == len(members)
    chosen = [r for r in rows if r["offer_id"]]
    assert chosen, "the demo catalogue offers something to customers aged 40+"
    assert all(r["channel"] in ("email", "outbound_call") for r in chosen)
    assert summary.expected_responses == pytest.approx(sum(float(r["propensity"]) for r in chosen))
    assert all(0 < float(r["probability"]) <= 1 for r in chosen)
    before = history_sizes(server, members)
    code, again = run_campaign(opts(server, out, rule_for("cmp-a")))
    assert code == EXIT_OK
    assert (again.decided_this_run, again.skipped_done) == (0, len(members))
    assert len(read_out(out)) == len(members)
    assert history_sizes(server, members) == before
    assert again.expected_net_value == pytest.approx(summary.expected_net_value)


def test_file_segment_with_a_limit_then_resumed_covers_everyone_once(
    server: str, tmp_path: Path
) -> None:
    preload(server, "cmp-b", 30)
    ids = tmp_path / "ids.csv"
    ids.write_text("customer_id\n" + "".join(f"cmp-b-{i}\n" for i in range(30)) + "cmp-b-3\n")
    out = tmp_path / "autumn.csv"
    code, first = run_campaign(opts(server, out, str(ids), limit=10))
    assert code == EXIT_OK and first.customers == 10
    code, rest = run_campaign(opts(server, out, str(ids)))
    assert code == EXIT_OK
    # cmp-b-3 is listed twice: skipped the second time, never decided twice.
    assert (rest.decided_this_run, rest.skipped_done, rest.customers) == (20, 11, 30)
    assert sorted(r["customer_id"] for r in read_out(out)) == sorted(
        f"cmp-b-{i}" for i in range(30)
    )


def test_a_batch_decided_but_never_written_is_answered_again_not_decided_twice(
    server: str, tmp_path: Path
) -> None:
    """The crash window: the server decided a batch, the campaign died before writing it."""
    preload(server, "cmp-c", 12)
    cids = [f"cmp-c-{i}" for i in range(12)]
    lost = cids[:5]
    out = tmp_path / "winter.csv"
    # What the campaign had sent just before it was killed.
    body = {"customer_ids": lost, "channels": ["email", "outbound_call"],
            "context": {"campaign_id": "winter"}, "idempotency_key": "campaign:winter"}  # fmt: skip
    r = httpx.post(f"{server}/v1/decide/batch", json=body, timeout=30, headers=auth_headers())
    assert r.status_code == 200, r.text
    decided = {d["customer_id"]: d["decision_id"] for d in r.json()["decisions"]}
    before = history_sizes(server, lost)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{c}\n" for c in cids))
    code, summary = run_campaign(opts(server, out, str(ids)))
    assert code == EXIT_OK and summary.decided_this_run == len(cids)
    rows = {row["customer_id"]: row for row in read_out(out)}
    assert {c: rows[c]["decision_id"] for c in lost} == decided
    assert history_sizes(server, lost) == before  # no second impression
    with httpx.Client(base_url=server, timeout=30, headers=auth_headers()) as c:
        logged = [len(c.get(f"/v1/profiles/{cid}/decisions").json()["decisions"]) for cid in lost]
    assert logged == [1] * len(lost)


def test_bad_rule_unknown_channel_or_foreign_output_send_nothing(
    server: str, tmp_path: Path
) -> None:
    out = tmp_path / "bad.csv"
    code, _ = run_campaign(opts(server, out, '{fact: attr.age, op: "~", value: 1}'))
    assert code == EXIT_USAGE and not out.exists()
    code, _ = run_campaign(opts(server, out, "{fact: no.such.fact, op: '==', value: 1}"))
    assert code == EXIT_USAGE and not out.exists()
    code, _ = run_campaign(opts(server, out, rule_for("cmp-c"), channels=["pigeon"]))
    assert code == EXIT_USAGE and not out.exists()
    other = tmp_path / "other.csv"
    preload(server, "cmp-c", 10)
    assert run_campaign(opts(server, other, rule_for("cmp-c"), campaign_id="x"))[0] == EXIT_OK
    code, _ = run_campaign(opts(server, other, rule_for("cmp-c"), campaign_id="y"))
    assert code == EXIT_USAGE


def test_segment_route_pages_through_shards_and_refuses_a_bad_rule(server: str) -> None:
    members = preload(server, "cmp-d", 25)
    rule = json.loads(rule_for("cmp-d"))
    found: list[str] = []
    with httpx.Client(base_url=server, timeout=30, headers=auth_headers()) as c:
        shard, shards, after = 0, 1, None
        while shard < shards:
            body = c.post(
                "/v1/segments/members",
                json={"rule": rule, "shard": shard, "after": after, "limit": 3},
            ).json()
            assert len(body["ids"]) <= 3
            found += body["ids"]
            shards, after = body["shards"], body["next"]
            shard += after is None
        bad = c.post("/v1/segments/members", json={"rule": {"fact": "attr.age", "op": "~~"}})
    assert sorted(found) == sorted(members)
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith("segment")
