"""Report counters and report bodies (models/reporting), without a server."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from models.decisioning.record import ChosenOffer, DecisionRecord
from models.errors import ValidationError
from models.reporting import reports
from models.reporting.counters import HOUR_S, ReportCounters, bucket_of

T0 = 1_748_865_600.0  # an hour boundary
POS = frozenset({"accepted", "clicked"})
COSTS = {"web": 0.5, "email": 0.1}


def decision(
    ts: float, offers: list[tuple[str, str, float, float]] | None = None,
    channels: tuple[str, ...] = ("web",), experiment: str | None = None,
    arm: str | None = None, policy: str = "full",
) -> DecisionRecord:  # fmt: skip
    chosen = [ChosenOffer(offer_id=o, group=o, channel=ch, treatment="t", propensity=p, value=v)
              for o, ch, p, v in offers or []]  # fmt: skip
    return DecisionRecord(
        decision_id=DecisionRecord.new_id(), customer_id="c", ts=ts, channels=list(channels),
        catalog_version="v", model_version=None, offers=chosen, impressions=bool(chosen),
        experiment=experiment, arm=arm, policy=policy,
    )  # fmt: skip


def respond(c: ReportCounters, r: DecisionRecord, offer: str | None, outcome: str) -> None:
    r.attribute(offer, outcome, r.ts + 10)
    c.count_outcome(r, POS)


def test_responses_count_in_the_hour_of_their_decision_and_positives_once() -> None:
    c = ReportCounters()
    r = decision(T0 + 100, [("card", "web", 0.3, 40.0)])
    c.count_decision(r, COSTS)
    respond(c, r, None, "clicked")
    respond(c, r, "card", "accepted")  # a second positive of the same offer: not a new positive
    body = reports.volumes(c, T0, T0 + 2 * HOUR_S)
    (row,) = body["series"]
    assert row["ts"] == T0 and row["offer_id"] == "card" and row["channel"] == "web"
    assert row["decisions"] == 1 and row["impressions"] == 1 and row["positives"] == 1
    assert row["responses"] == {"accepted": 1, "clicked": 1}
    assert row["value"] == 40.0 and row["cost"] == 0.5 and row["success_rate"] == 1.0


def test_no_message_counts_per_channel_and_its_outcomes_too() -> None:
    c = ReportCounters()
    r = decision(T0, None, channels=("web", "email"))
    c.count_decision(r, COSTS)
    respond(c, r, None, "accepted")
    rows = {(t["channel"], t["offer_id"]): t for t in reports.volumes(c, T0, T0 + 60)["totals"]}
    assert rows[("web", None)]["decisions"] == 1 and rows[("web", None)]["positives"] == 1
    assert rows[("email", None)]["positives"] == 1
    assert c.arms[(T0, None, None)][2] == 1  # the decision is positive once, not per channel


def test_state_round_trips_through_msgpack_and_merging_adds_up() -> None:
    shards = [ReportCounters(), ReportCounters()]
    for i in range(40):
        r = decision(T0 + i * 200, [("card", "web", 0.1 + i / 100, 10.0)], experiment="e",
                     arm="a" if i % 2 else "b")  # fmt: skip
        shards[i % 2].count_decision(r, COSTS)
        if i % 3 == 0:
            respond(shards[i % 2], r, "card", "clicked")
    shards[0].count_fallbacks([[T0, "web", "card", 3]])
    wire = [msgspec.msgpack.decode(msgspec.msgpack.encode(s.state())) for s in shards]
    merged = ReportCounters.merged(wire)
    one = ReportCounters.merged([wire[1], wire[0]])
    assert reports.volumes(merged, T0, T0 + 3 * HOUR_S) == reports.volumes(one, T0, T0 + 3 * HOUR_S)
    totals = reports.volumes(merged, T0, T0 + 3 * HOUR_S)["totals"]
    assert sum(t["decisions"] for t in totals) == 40 + 3
    assert sum(t["positives"] for t in totals) == 14
    assert reports.fallback_series(merged, T0, T0 + 3 * HOUR_S)["total"] == 3


def test_retention_drops_old_hours_only() -> None:
    c = ReportCounters(retention_h=2)
    c.count_decision(decision(T0), COSTS)
    c.count_decision(decision(T0 + HOUR_S), COSTS)
    assert {k[0] for k in c.arms} == {T0, T0 + HOUR_S}
    c.count_decision(decision(T0 + 2 * HOUR_S), COSTS)  # a new hour prunes the oldest
    assert {k[0] for k in c.arms} == {T0 + HOUR_S, T0 + 2 * HOUR_S}


def test_bad_ranges_name_their_field() -> None:
    with pytest.raises(ValidationError) as e:
        reports.time_range(100.0, 50.0, T0)
    assert e.value.field == "until"
    with pytest.raises(ValidationError) as e:
        reports.time_range(0.0, T0, T0)
    assert e.value.field == "since"
    with pytest.raises(ValidationError) as e:
        reports.time_range(math.nan, None, T0)
    assert e.value.field == "since"
    assert reports.time_range(None, None, T0) == (T0 - 86400, T0)


def test_lift_ci_covers_the_true_lift_about_95_percent_of_the_time() -> None:
    rng = random.Random(5)
    p_c, p_a, n = 0.10, 0.13, 3000
    covered = 0
    runs = 200
    for _ in range(runs):
        a = sum(rng.random() < p_a for _ in range(n))
        c = sum(rng.random() < p_c for _ in range(n))
        lift = reports.relative_lift(n, a, a, n, c, c)
        covered += lift["ci_low"] <= p_a / p_c - 1 <= lift["ci_high"]
    assert 0.90 <= covered / runs <= 0.99


def test_experiment_report_gives_lift_against_control_and_significance() -> None:
    c = ReportCounters()
    rng = random.Random(1)
    for i in range(4000):
        arm = "control" if i % 2 else "nba"
        r = decision(T0 + i, [("card", "web", 0.2, 10.0)], experiment="impact", arm=arm,
                     policy="no_message" if arm == "control" else "full")  # fmt: skip
        c.count_decision(r, COSTS)
        if rng.random() < (0.05 if arm == "control" else 0.15):
            respond(c, r, "card", "accepted")
    (exp,) = reports.experiments(c, T0, T0 + 2 * HOUR_S)["experiments"]
    assert exp["name"] == "impact" and exp["control"] == "control"
    arms = {a["arm"]: a for a in exp["arms"]}
    assert arms["control"]["lift"] is None and arms["nba"]["share"] == 0.5
    lift = arms["nba"]["lift"]["success_rate"]
    assert lift["significant"] and lift["ci_low"] > 0.5 and 1.0 < lift["estimate"] < 3.0
    assert arms["nba"]["value_per_decision"] == pytest.approx(arms["nba"]["success_rate"] * 10)


def test_auc_series_ranks_by_propensity() -> None:
    c = ReportCounters()
    rng = random.Random(2)
    for i in range(2000):
        p = rng.random()
        r = decision(T0 + i * 3, [("card", "web", p, 1.0)])
        c.count_decision(r, COSTS)
        if rng.random() < p:
            respond(c, r, "card", "clicked")
    body = reports.models(c, T0, T0 + 2 * HOUR_S, {})
    (m,) = body["models"]
    assert m["key"] == "card@web" and not m["adaptive"] and m["evidence"] == 2000
    assert 0.75 < m["auc"] < 0.9  # the true AUC of p ~ U(0,1), y ~ Bernoulli(p) is 5/6
    assert [s["ts"] for s in m["auc_series"]] == [T0, T0 + HOUR_S]
    assert bucket_of(T0 + 3599) == T0
