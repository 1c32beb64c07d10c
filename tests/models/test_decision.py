"""The decide cascade on the demo catalogue, batch scoring, and request parsing."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml

from models.customer.events import Event
from models.customer.profile import Profile
from models.decisioning.arbitration import decide, decide_many
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest, parse_decide_batch, parse_decide_request
from models.errors import ValidationError

NOW = 1_748_865_600.0  # Monday 2 June 2025, 12:00 UTC
DAY = 86400.0
DEMO_CATALOG = Path(__file__).resolve().parents[2] / "models" / "demo" / "catalog.yaml"
CREDIT = {"credit_card", "personal_loan"}
SALES = {"credit_card", "personal_loan", "savings_account", "mortgage_review", "premium_account"}
_ids = itertools.count()


class FixedScorer:
    """Propensity per offer id, scaled by ``attrs["p_scale"]``; counts its calls."""

    version = "fixed-1"

    def __init__(self, table: dict[str, float] | None = None, default: float = 0.1) -> None:
        self.table = table or {}
        self.default = default
        self.features_calls = 0
        self.predict_calls = 0
        self.rows = 0
        self.contexts: list[dict] = []

    def features(
        self, profile: Profile, context: dict, cands: Sequence[Any], now: float
    ) -> np.ndarray:
        self.features_calls += 1
        self.contexts.append(dict(context))
        scale = float(profile.attrs.get("p_scale", 1.0))
        rows = [[min(1.0, self.table.get(c.offer_id, self.default) * scale)] for c in cands]
        return np.asarray(rows, dtype=np.float32).reshape(len(cands), 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.predict_calls += 1
        self.rows += len(X)
        return X[:, 0].astype(np.float64)


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog(DEMO_CATALOG)


def ev(
    etype: str, ts: float, ch: str | None = None, offer: str | None = None, **attrs: Any
) -> Event:
    return Event(f"e{next(_ids)}", "c1", etype, ts, ch, attrs, offer, None)


def customer(attrs: dict | None = None, events: Sequence[Event] = (), cid: str = "c1") -> Profile:
    p = Profile(cid, attrs={"age": 40, "income": 50000, **(attrs or {})})
    for e in events:
        p.apply(e, NOW, 1800.0)
    return p


def request(channel: str | list[str] = "web", **fields: Any) -> DecideRequest:
    body = {"customer_id": "c1", **fields}
    body["channels" if isinstance(channel, list) else "channel"] = channel
    return parse_decide_request(body)


def offered(decision: DecisionRecord) -> list[str]:
    return [o.offer_id for o in decision.offers]


def scored(decision: DecisionRecord) -> set[str]:
    return {c["offer_id"] for c in decision.candidates}


# -- the cascade on the demo catalogue ---------------------------------------------


def test_failed_credit_check_removes_credit_offers_while_a_passing_customer_gets_one(
    demo: Catalog,
) -> None:
    scorer = FixedScorer({"credit_card": 0.3}, default=0.01)
    failed = customer(events=[ev("credit_check", NOW - 10 * DAY, result="fail")])
    passed = customer(events=[ev("credit_check", NOW - 10 * DAY, result="pass")])
    assert scored(decide(failed, request("email"), demo, scorer, NOW)).isdisjoint(CREDIT)
    assert offered(decide(passed, request("email"), demo, scorer, NOW)) == ["credit_card"]


def test_credit_check_failed_over_90_days_ago_no_longer_blocks(demo: Catalog) -> None:
    old_fail = customer(events=[ev("credit_check", NOW - 91 * DAY, result="fail")])
    scorer = FixedScorer({"credit_card": 0.3}, default=0.01)
    decision = decide(old_fail, request("email"), demo, scorer, NOW)
    assert offered(decision) == ["credit_card"]


def test_complaint_a_minute_ago_suppresses_sales_offers(demo: Catalog) -> None:
    p = customer(events=[ev("complaint", NOW - 60, "call_center")])
    decision = decide(p, request("web", limit=5), demo, FixedScorer(default=0.5), NOW)
    assert scored(decision).isdisjoint(SALES)
    assert set(offered(decision)) == {"retention_offer", "service_message"}


def test_complaint_ten_minutes_ago_does_not_suppress_sales_offers(demo: Catalog) -> None:
    p = customer(events=[ev("complaint", NOW - 600, "call_center")])
    decision = decide(p, request("email", limit=5), demo, FixedScorer(default=0.5), NOW)
    assert SALES - {"premium_account"} <= scored(decision)  # premium needs a higher income


def test_low_value_customer_gets_email_and_high_value_customer_gets_the_call(
    demo: Catalog,
) -> None:
    scorer = FixedScorer({"mortgage_review": 0.2})
    low = customer({"income": 30000, "p_scale": 0.15})
    high = customer({"income": 150000})
    req = request(["email", "outbound_call"])
    low_choice = decide(low, req, demo, scorer, NOW).offers[0]
    high_choice = decide(high, req, demo, scorer, NOW).offers[0]
    assert (low_choice.offer_id, low_choice.channel) == ("mortgage_review", "email")
    assert (high_choice.offer_id, high_choice.channel) == ("mortgage_review", "outbound_call")


def test_everything_under_the_threshold_gives_no_action(demo: Catalog) -> None:
    decision = decide(
        customer(), request("web", explain=True), demo, FixedScorer(default=0.001), NOW
    )
    assert decision.offers == []
    assert decision.no_action
    assert decision.candidates  # they were scored, just not worth saying
    assert {t["rule"] for t in decision.trace if t["stage"] == "arbitration"} == {"min_priority"}


def test_explain_names_the_rule_that_removed_each_offer(demo: Catalog) -> None:
    p = customer(
        {"age": 70, "income": 20000},
        [ev("credit_check", NOW - DAY, result="fail"), ev("complaint", NOW - 60)],
    )
    decision = decide(p, request("email", explain=True), demo, FixedScorer(default=0.5), NOW)
    first_rule = {t["offer_id"]: t["rule"] for t in decision.trace if t["stage"] != "arbitration"}
    assert first_rule == {
        "credit_card": "no_recent_credit_fail",
        "personal_loan": "no_recent_credit_fail",
        "mortgage_review": "no_recent_credit_fail",  # global rules come before the offer's
        "premium_account": "premium_income",
        "savings_account": "complaint_cooldown",
    }
    by_offer = {t["offer_id"]: t for t in decision.trace}
    assert by_offer["premium_account"]["stage"] == "eligibility"
    assert by_offer["savings_account"]["stage"] == "suitability"
    assert (
        by_offer["savings_account"]["reason"] == "No sales offer within 5 minutes of a complaint."
    )
    chosen = [t for t in decision.trace if t["chosen"]]
    assert [t["offer_id"] for t in chosen] == offered(decision) == ["retention_offer"]
    assert {"p", "c", "v", "l", "priority", "net_value", "rank"} <= set(chosen[0])


def test_trace_is_absent_without_explain(demo: Catalog) -> None:
    assert decide(customer(), request("web"), demo, FixedScorer(), NOW).trace is None


def test_opt_out_of_a_channel_removes_everything_on_it(demo: Catalog) -> None:
    p = customer(events=[ev("opt_out", NOW - DAY, "email", channel="email")])
    decision = decide(p, request("email", explain=True), demo, FixedScorer(default=0.5), NOW)
    assert decision.offers == [] and decision.candidates == []
    assert {t["rule"] for t in decision.trace} == {"channel_consent"}
    assert offered(decide(p, request("web"), demo, FixedScorer(default=0.5), NOW))


def test_outbound_calls_only_in_business_hours(demo: Catalog) -> None:
    scorer = FixedScorer({"mortgage_review": 0.3})
    rich = customer({"income": 150000})
    evening = NOW + 9 * 3600  # 21:00 UTC
    assert decide(rich, request("outbound_call"), demo, scorer, NOW).offers
    assert decide(rich, request("outbound_call"), demo, scorer, evening).offers == []
    choice = decide(rich, request(["email", "outbound_call"]), demo, scorer, evening).offers[0]
    assert choice.channel == "email"


def test_request_hour_in_context_overrides_the_clock(demo: Catalog) -> None:
    rich = customer({"income": 150000})
    req = request("outbound_call", context={"hour": 22})
    assert decide(rich, req, demo, FixedScorer({"mortgage_review": 0.3}), NOW).offers == []


def test_mobile_device_hides_long_form_offers_on_web(demo: Catalog) -> None:
    scorer = FixedScorer(default=0.5)
    mobile = decide(customer(), request("web", context={"device": "mobile"}), demo, scorer, NOW)
    desktop = decide(customer(), request("web", context={"device": "desktop"}), demo, scorer, NOW)
    assert {"personal_loan", "mortgage_review"}.isdisjoint(scored(mobile))
    assert {"personal_loan", "mortgage_review"} <= scored(desktop)


def test_rejected_offer_is_not_shown_again_for_30_days(demo: Catalog) -> None:
    scorer = FixedScorer({"credit_card": 0.5})
    recent = customer(
        events=[ev("response", NOW - 5 * DAY, "web", "credit_card", outcome="rejected")]
    )
    old = customer(
        events=[ev("response", NOW - 31 * DAY, "web", "credit_card", outcome="rejected")]
    )
    assert "credit_card" not in scored(decide(recent, request("email"), demo, scorer, NOW))
    assert "credit_card" in scored(decide(old, request("email"), demo, scorer, NOW))


@pytest.mark.parametrize(
    ("attrs", "offer", "eligible"),
    [
        ({"age": 30}, "mortgage_review", True),
        ({"age": 24}, "mortgage_review", False),
        ({"age": 66}, "mortgage_review", False),
        ({"income": 60000}, "premium_account", True),
        ({"income": 59999}, "premium_account", False),
        ({"churn_risk": 0.8}, "retention_offer", True),
        ({"churn_risk": 0.2}, "retention_offer", False),
    ],
)
def test_demo_eligibility_rules(demo: Catalog, attrs: dict, offer: str, eligible: bool) -> None:
    decision = decide(
        customer(attrs), request("email", limit=5), demo, FixedScorer(default=0.5), NOW
    )
    assert (offer in scored(decision)) is eligible


def test_at_most_one_offer_per_group_and_at_most_limit(demo: Catalog) -> None:
    scorer = FixedScorer({"personal_loan": 0.5, "credit_card": 0.5, "savings_account": 0.5})
    decision = decide(customer(), request("web", limit=2), demo, scorer, NOW)
    assert offered(decision) == ["personal_loan", "mortgage_review"]
    assert len({o.group for o in decision.offers}) == 2


def test_priority_is_p_times_c_times_v_times_l(demo: Catalog) -> None:
    scorer = FixedScorer({"savings_account": 0.5}, default=0.0)
    decision = decide(customer(), request("web", placement="sidebar"), demo, scorer, NOW)
    top = decision.offers[0]
    # savings: V 40, L 1.2, sidebar weight 0.8
    assert top.offer_id == "savings_account"
    assert top.priority == pytest.approx(0.5 * 0.8 * 40 * 1.2)
    assert top.treatment == "sa_web_side" and top.placement == "sidebar"


def test_placement_limits_candidates_to_its_treatments(demo: Catalog) -> None:
    decision = decide(customer(), request("web", placement="home_hero"), demo, FixedScorer(), NOW)
    assert {c["treatment"] for c in decision.candidates} <= {
        "cc_web_hero", "pl_web_hero", "mr_web_hero", "ro_web_hero"
    }  # fmt: skip


def test_offer_outside_its_dates_is_not_a_candidate(demo: Catalog) -> None:
    data = copy.deepcopy(yaml.safe_load(DEMO_CATALOG.read_text()))
    data["offers"][0]["end"] = "2025-05-31"
    ended = load_catalog(data)
    decision = decide(customer(), request("email", explain=True), ended, FixedScorer(), NOW)
    removed = [t for t in decision.trace if t["offer_id"] == "credit_card"]
    assert removed[0]["stage"] == "candidates" and removed[0]["rule"] == "active_dates"
    data["offers"][0]["end"] = "2025-06-02"  # a date-only end includes that day
    running = decide(customer(), request("email"), load_catalog(data), FixedScorer(), NOW)
    assert "credit_card" in scored(running)


def test_context_given_to_the_model_has_channel_placement_device_and_time(demo: Catalog) -> None:
    scorer = FixedScorer()
    req = request("web", placement="sidebar", context={"device": "tablet", "page": "/loans"})
    decide(customer(), req, demo, scorer, NOW)
    ctx = scorer.contexts[0]
    assert ctx["channel"] == "web" and ctx["placement"] == "sidebar"
    assert ctx["device"] == "tablet" and ctx["page"] == "/loans"
    assert (ctx["hour"], ctx["weekday"]) == (12, 0)
    decide(customer(), request("app"), demo, scorer, NOW)
    assert scorer.contexts[1]["device"] is None and scorer.contexts[1]["placement"] is None


def test_no_surviving_candidates_means_no_model_call(demo: Catalog) -> None:
    scorer = FixedScorer()
    p = customer(events=[ev("opt_out", NOW - DAY, "web", channel="all")])
    decision = decide(p, request("web"), demo, scorer, NOW)
    assert decision.offers == [] and scorer.predict_calls == 0 and scorer.features_calls == 0
    assert decision.model_version == "fixed-1"


def test_fixed_propensity_offers_skip_the_model() -> None:
    data = {
        "version": "fixed-p",
        "channels": {"web": {"kind": "inbound"}},
        "offers": [
            {"id": "notice", "group": "service", "value": 10, "propensity": 0.5,
             "treatments": [{"id": "n", "channel": "web"}]},
            {"id": "card", "group": "credit", "value": 10,
             "treatments": [{"id": "c", "channel": "web"}]},
        ],
    }  # fmt: skip
    scorer = FixedScorer(default=0.1)
    decision = decide(customer(), request("web", limit=2), load_catalog(data), scorer, NOW)
    assert offered(decision) == ["notice", "card"]
    assert scorer.rows == 1


def test_decision_record_projects_to_answer_and_log_entry(demo: Catalog) -> None:
    decision = decide(customer(), request("email", limit=2), demo, FixedScorer(default=0.3), NOW)
    answer = json.loads(json.dumps(decision.answer()))
    assert answer["catalog_version"] == "demo-bank-2025.1" and answer["model_version"] == "fixed-1"
    assert set(answer["offers"][0]) == {"offer_id", "channel", "treatment", "placement",
                                        "content", "propensity", "priority", "value",
                                        "probability"}  # fmt: skip
    assert answer["fallback"] is False and "trace" not in answer
    entry = json.loads(json.dumps(decision.log_entry()))
    assert entry["decision_id"] == answer["decision_id"]
    assert [c["probability"] for c in entry["chosen"]] == [1.0] * len(decision.offers)
    assert len(entry["candidates"]) == 5  # premium (income) and retention (no churn) removed
    assert not decision.no_action


# -- batch scoring --------------------------------------------------------------------


def test_decide_many_scores_once_and_matches_decide(demo: Catalog) -> None:
    table = {"mortgage_review": 0.2, "credit_card": 0.05}
    items = [
        (customer({"income": 150000}, cid="a"), request(["email", "outbound_call"])),
        (customer({"income": 30000, "p_scale": 0.1}, cid="b"), request(["email", "outbound_call"])),
        (customer(events=[ev("complaint", NOW - 60)], cid="c"), request("web", limit=3)),
        (customer(events=[ev("opt_out", NOW - 60, channel="all")], cid="d"), request("app")),
        (customer({"churn_risk": 0.9}, cid="e"), request("app", explain=True)),
    ]
    batch_scorer = FixedScorer(table)
    batch = decide_many(items, demo, batch_scorer, NOW)
    assert batch_scorer.predict_calls == 1
    singles = [decide(p, r, demo, FixedScorer(table), NOW) for p, r in items]

    def same(d: DecisionRecord) -> dict:
        return {**msgspec.to_builtins(d), "decision_id": None}

    assert [same(d) for d in batch] == [same(d) for d in singles]
    assert batch_scorer.rows == sum(len(d.candidates) for d in singles)


def test_decide_many_of_nothing_scores_nothing(demo: Catalog) -> None:
    scorer = FixedScorer()
    assert decide_many([], demo, scorer, NOW) == []
    assert scorer.predict_calls == 0


# -- request parsing --------------------------------------------------------------------


def test_request_defaults(demo: Catalog) -> None:
    req = parse_decide_request({"customer_id": "c1", "channel": "web"}, demo)
    assert req == DecideRequest("c1", ("web",), None, {}, 1, False, None)


def test_full_request(demo: Catalog) -> None:
    body = {
        "customer_id": "c1", "channels": ["email", "outbound_call"], "context": {"hour": 9},
        "limit": 3, "explain": True, "deadline_ms": 50,
    }  # fmt: skip
    req = parse_decide_request(body, demo)
    assert req.channels == ("email", "outbound_call") and req.limit == 3 and req.explain
    assert req.deadline_ms == 50.0 and req.context == {"hour": 9}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], None),
        ({"channel": "web"}, "customer_id"),
        ({"customer_id": "", "channel": "web"}, "customer_id"),
        ({"customer_id": 7, "channel": "web"}, "customer_id"),
        ({"customer_id": "c1"}, "channel"),
        ({"customer_id": "c1", "channel": "web", "channels": ["app"]}, "channels"),
        ({"customer_id": "c1", "channels": []}, "channels"),
        ({"customer_id": "c1", "channels": "web"}, "channels"),
        ({"customer_id": "c1", "channels": ["web", 3]}, "channels[1]"),
        ({"customer_id": "c1", "channels": ["web", "fax"]}, "channels[1]"),
        ({"customer_id": "c1", "channels": ["web", "web"]}, "channels[1]"),
        ({"customer_id": "c1", "channel": "fax"}, "channel"),
        ({"customer_id": "c1", "channel": "web", "placement": "inbox"}, "placement"),
        ({"customer_id": "c1", "channel": "web", "placement": 3}, "placement"),
        ({"customer_id": "c1", "channel": "web", "limit": 0}, "limit"),
        ({"customer_id": "c1", "channel": "web", "limit": 21}, "limit"),
        ({"customer_id": "c1", "channel": "web", "limit": "2"}, "limit"),
        ({"customer_id": "c1", "channel": "web", "limit": True}, "limit"),
        ({"customer_id": "c1", "channel": "web", "explain": "yes"}, "explain"),
        ({"customer_id": "c1", "channel": "web", "deadline_ms": 0}, "deadline_ms"),
        ({"customer_id": "c1", "channel": "web", "deadline_ms": "5"}, "deadline_ms"),
        ({"customer_id": "c1", "channel": "web", "context": []}, "context"),
        ({"customer_id": "c1", "channel": "web", "context": {"channel": "app"}}, "context.channel"),
        ({"customer_id": "c1", "channel": "web", "context": {"hour": 24}}, "context.hour"),
        ({"customer_id": "c1", "channel": "web", "context": {"weekday": "mon"}}, "context.weekday"),
        ({"customer_id": "c1", "channel": "web", "context": {"device": 1}}, "context.device"),
        ({"customer_id": "c1", "channel": "web", "context": {"x": {"nested": 1}}}, "context.x"),
        ({"customer_id": "c1", "channel": "web", "context": {"_gap": 1}}, "context"),
        ({"customer_id": "c1", "channel": "web", "chanel": "app"}, "chanel"),
    ],
)
def test_invalid_requests_name_the_field(demo: Catalog, body: Any, field: str | None) -> None:
    with pytest.raises(ValidationError) as err:
        parse_decide_request(body, demo)
    assert err.value.field == field


def test_unknown_channels_pass_without_a_catalogue() -> None:
    assert parse_decide_request({"customer_id": "c1", "channel": "fax"}).channels == ("fax",)


def test_batch_of_requests(demo: Catalog) -> None:
    body = {
        "requests": [
            {"customer_id": "a", "channel": "web"},
            {"customer_id": "b", "channels": ["email", "sms"], "limit": 2},
        ]
    }
    reqs = parse_decide_batch(body, demo, max_batch=10)
    assert [(r.customer_id, r.channels, r.limit) for r in reqs] == [
        ("a", ("web",), 1), ("b", ("email", "sms"), 2)
    ]  # fmt: skip


def test_batch_of_customers_with_shared_fields(demo: Catalog) -> None:
    body = {"customer_ids": ["a", "b", "c"], "channels": ["email", "outbound_call"], "limit": 2}
    reqs = parse_decide_batch(body, demo, max_batch=10)
    assert [r.customer_id for r in reqs] == ["a", "b", "c"]
    assert all(r.channels == ("email", "outbound_call") and r.limit == 2 for r in reqs)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"requests": [{"customer_id": "a", "channel": "web"}, {"customer_id": "b"}]},
            "requests[1].channel",
        ),
        (
            {
                "requests": [
                    {"customer_id": "a", "channel": "web"},
                    {"customer_id": "b", "channels": ["web", "fax"]},
                ]
            },
            "requests[1].channels[1]",
        ),
        ({"requests": ["x"]}, "requests[0]"),
        ({"requests": []}, "requests"),
        ({"requests": [{"customer_id": "a", "channel": "web"}] * 11}, "requests"),
        ({"requests": [], "customer_ids": []}, "requests"),
        ({}, "requests"),
        ({"requests": [{"customer_id": "a", "channel": "web"}], "limit": 2}, "limit"),
        ({"customer_ids": ["a", 3], "channel": "web"}, "customer_ids[1]"),
        ({"customer_ids": ["a"], "channel": "web", "limit": 50}, "limit"),
        ({"customer_ids": ["a"], "customer_id": "b", "channel": "web"}, "customer_id"),
    ],
)
def test_invalid_batches_name_the_field(demo: Catalog, body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_decide_batch(body, demo, max_batch=10)
    assert err.value.field == field


def test_oversized_batch_has_its_own_code(demo: Catalog) -> None:
    with pytest.raises(ValidationError) as err:
        parse_decide_batch({"customer_ids": ["a"] * 11, "channel": "web"}, demo, max_batch=10)
    assert err.value.code == "batch_too_large"


def test_the_decision_log_finds_a_keyed_decision_until_it_is_evicted_or_erased():
    from models.decisioning.log import DecisionLog
    from models.decisioning.record import DecisionRecord

    def rec(cid: str, key: str | None) -> DecisionRecord:
        return DecisionRecord(decision_id=DecisionRecord.new_id(), customer_id=cid, ts=0.0,
                              channels=["email"], catalog_version="v", model_version=None,
                              offers=[], request_key=key)  # fmt: skip

    log = DecisionLog(capacity=2)
    first = rec("c-1", "campaign:x")
    log.add(first)
    assert log.keyed("c-1", "campaign:x") is first
    assert log.keyed("c-2", "campaign:x") is None and log.keyed("c-1", "campaign:y") is None
    log.add(rec("c-2", "campaign:x"))
    log.add(rec("c-3", None))  # evicts the first
    assert log.keyed("c-1", "campaign:x") is None
    log.erase("c-2")
    assert log.keyed("c-2", "campaign:x") is None


def test_a_model_answering_nan_or_out_of_range_gives_propensities_in_0_1(demo: Catalog) -> None:
    """NaN counts as 0, +inf as 1, anything else is clamped into [0, 1]."""

    class Wild(FixedScorer):
        def predict(self, X: np.ndarray) -> np.ndarray:
            wild = np.array([np.nan, np.inf, -np.inf, 1.7, -0.2, 0.4])
            return np.resize(wild, len(X))

    d = decide(customer(), request(explain=True), demo, Wild(), NOW)
    props = [c["propensity"] for c in d.candidates]
    assert props and all(0.0 <= p <= 1.0 for p in props), props
    assert 0.0 in props and 1.0 in props
