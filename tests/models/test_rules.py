"""The rule language: operators, combinators, missing facts, compile errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models.customer.profile import Profile
from models.decisioning.rules import compile_condition, compile_rule
from models.errors import CatalogError

NOW = 1_750_000_000.0
OFFER = SimpleNamespace(
    offer_id="credit_card",
    group="credit",
    channel="web",
    placement="home_hero",
    treatment_id="cc_web",
    value=120.0,
    tags=("sales", "credit"),
)


def holds(cond: dict, profile: Profile | None = None, context: dict | None = None) -> bool:
    test = compile_condition(cond, "test").test
    return bool(test(profile or Profile("c1"), context or {}, OFFER, NOW))


def customer(**attrs: object) -> Profile:
    return Profile("c1", attrs=dict(attrs))


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("==", 40, True),
        ("!=", 40, False),
        ("<", 41, True),
        ("<=", 40, True),
        (">", 40, False),
        (">=", 40, True),
        ("in", [30, 40], True),
        ("not_in", [30, 40], False),
        ("eq", 40, True),
        ("gte", 41, False),
        ("lt", 50, True),
    ],
)
def test_comparison_operators_on_a_number(op: str, value: object, expected: bool) -> None:
    assert holds({"fact": "attr.age", "op": op, "value": value}, customer(age=40)) is expected


def test_contains_tests_membership_in_a_list_fact() -> None:
    assert holds({"fact": "offer.tags", "op": "contains", "value": "sales"})
    assert not holds({"fact": "offer.tags", "op": "contains", "value": "service"})


def test_contains_on_holdings() -> None:
    p = Profile("c1", holdings=["mortgage"])
    assert holds({"fact": "holdings", "op": "contains", "value": "mortgage"}, p)


def test_never_happened_makes_since_comparisons_false() -> None:
    never_complained = Profile("c1")
    assert not holds({"fact": "since.complaint", "op": "<", "value": "5m"}, never_complained)
    assert not holds({"fact": "since.complaint", "op": ">", "value": "5m"}, never_complained)


@pytest.mark.parametrize("op", ["==", "!=", "<", ">=", "in", "not_in", "contains"])
def test_every_comparison_with_an_unset_fact_is_false(op: str) -> None:
    value = ["x"] if op in ("in", "not_in") else ("x" if op in ("==", "!=", "contains") else 1)
    assert not holds({"fact": "attr.segment", "op": op, "value": value}, customer())


def test_missing_and_exists_test_for_an_unset_fact() -> None:
    assert holds({"fact": "attr.segment", "op": "missing"}, customer())
    assert not holds({"fact": "attr.segment", "op": "exists"}, customer())
    assert holds({"fact": "attr.segment", "op": "exists"}, customer(segment="young"))


def test_durations_stand_for_seconds_on_time_facts() -> None:
    p = Profile("c1", last={"complaint": NOW - 60})
    assert holds({"fact": "since.complaint", "op": "<", "value": "5m"}, p)
    assert not holds({"fact": "since.complaint", "op": "<", "value": "30s"}, p)
    assert holds({"fact": "since.complaint", "op": "<", "value": 61}, p)


def test_comparing_a_string_with_a_number_is_false_not_an_error() -> None:
    assert not holds({"fact": "attr.income", "op": ">=", "value": 1000}, customer(income="high"))


def test_combinators_all_any_not() -> None:
    p = customer(age=30, income=50000)
    age_ok = {"fact": "attr.age", "op": ">=", "value": 25}
    rich = {"fact": "attr.income", "op": ">=", "value": 100000}
    assert holds({"all": [age_ok, {"not": rich}]}, p)
    assert not holds({"all": [age_ok, rich]}, p)
    assert holds({"any": [rich, age_ok]}, p)
    assert not holds({"any": [rich, {"not": age_ok}]}, p)


def test_context_facts_read_the_request_context() -> None:
    cond = {"fact": "context.hour", "op": "<", "value": 9}
    assert holds(cond, context={"hour": 8})
    assert not holds(cond, context={"hour": 12})


def test_rules_reading_offer_facts_are_marked_per_candidate() -> None:
    assert compile_condition(
        {"fact": "offer.since_rejection", "op": "<", "value": "1d"}, "t"
    ).per_candidate
    assert not compile_condition(
        {"fact": "since.complaint", "op": "<", "value": "1d"}, "t"
    ).per_candidate


def _rule(spec: dict) -> object:
    return compile_rule(spec, "eligibility", "policies.eligibility[r]", 0, lambda _: None)


def test_exclude_when_removes_when_the_condition_holds() -> None:
    rule = _rule(
        {
            "id": "r",
            "reason": "minors",
            "exclude_when": {"fact": "attr.age", "op": "<", "value": 18},
        }
    )
    assert rule.excludes(customer(age=16), {}, OFFER, NOW)
    assert not rule.excludes(customer(age=30), {}, OFFER, NOW)
    assert not rule.excludes(customer(), {}, OFFER, NOW)  # unknown age: not excluded


def test_require_removes_unless_the_condition_holds() -> None:
    rule = _rule(
        {
            "id": "r",
            "reason": "rich",
            "require": {"fact": "attr.income", "op": ">=", "value": 60000},
        }
    )
    assert not rule.excludes(customer(income=90000), {}, OFFER, NOW)
    assert rule.excludes(customer(income=20000), {}, OFFER, NOW)
    assert rule.excludes(customer(), {}, OFFER, NOW)  # unknown income: not eligible


@pytest.mark.parametrize(
    ("cond", "field"),
    [
        ({"fact": "attr", "op": "==", "value": 1}, "x.fact"),
        ({"fact": "since_complaint", "op": "<", "value": "5m"}, "x.fact"),
        ({"fact": "attr.age", "op": "=~", "value": 1}, "x.op"),
        ({"fact": "attr.age", "op": ">", "value": "old"}, "x.value"),
        ({"fact": "since.complaint", "op": "<", "value": "5 minutes"}, "x.value"),
        ({"fact": "attr.age", "op": "in", "value": 3}, "x.value"),
        ({"fact": "attr.age", "op": "=="}, "x.value"),
        ({"fact": "attr.age", "op": "exists", "value": 1}, "x.value"),
        ({"fact": "attr.age", "op": "==", "value": 1, "extra": 1}, "x"),
        ({"all": []}, "x.all"),
        (
            {
                "all": [
                    {"fact": "attr.age", "op": "<", "value": 1},
                    {"fact": "nope", "op": "==", "value": 1},
                ]
            },
            "x.all[1].fact",
        ),
        ({"not": {"fact": "attr.age", "op": "bad", "value": 1}}, "x.not.op"),
        ({"any": [], "all": []}, "x"),
        ("attr.age > 3", "x"),
    ],
)
def test_invalid_conditions_name_the_field(cond: object, field: str) -> None:
    with pytest.raises(CatalogError) as err:
        compile_condition(cond, "x")
    assert err.value.field == field


def test_a_rule_needs_exactly_one_of_exclude_when_or_require() -> None:
    cond = {"fact": "attr.age", "op": "<", "value": 18}
    with pytest.raises(CatalogError, match="exactly one"):
        _rule({"id": "r", "reason": "x", "exclude_when": cond, "require": cond})
    with pytest.raises(CatalogError, match="exactly one"):
        _rule({"id": "r", "reason": "x"})


def test_a_rule_needs_a_reason() -> None:
    with pytest.raises(CatalogError) as err:
        _rule({"id": "r", "exclude_when": {"fact": "attr.age", "op": "<", "value": 18}})
    assert err.value.field == "policies.eligibility[r].reason"
