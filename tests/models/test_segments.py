"""Segment rules: parsed and compiled once, evaluated over a shard's profiles in id pages."""

from __future__ import annotations

import pytest

from models.customer.events import Event
from models.customer.store import ProfileStore
from models.decisioning.segments import compile_segment, parse_segment_rule, segment_page
from models.errors import ValidationError

NOW = 1_800_000_000.0


def store_with_ages(ages: dict[str, int]) -> ProfileStore:
    store = ProfileStore()
    events = [
        Event(f"e-{cid}", cid, "profile_update", NOW, None, {"age": age}, None, None)
        for cid, age in ages.items()
    ]
    store.apply_events(events, NOW, lambda ev: ev)
    return store


def test_pages_return_members_in_id_order_until_the_cursor_runs_out() -> None:
    store = store_with_ages({f"c{i:02d}": 30 + i for i in range(20)})
    test = compile_segment(parse_segment_rule("{fact: attr.age, op: '>=', value: 40}"))
    pages, after = [], None
    while True:
        ids, after = segment_page(store, test, after, 4, NOW)
        pages.append(ids)
        if after is None:
            break
    assert [cid for page in pages for cid in page] == [f"c{i:02d}" for i in range(10, 20)]
    assert all(len(p) <= 4 for p in pages)


def test_bad_or_candidate_rules_are_refused_naming_the_segment() -> None:
    with pytest.raises(ValidationError, match="unknown op"):
        parse_segment_rule("{fact: attr.age, op: '=~', value: 1}")
    with pytest.raises(ValidationError, match="profile facts only"):
        compile_segment({"fact": "offer.impressions.7d", "op": ">", "value": 1})
    with pytest.raises(ValidationError, match="must be a condition"):
        parse_segment_rule("age > 40")


@pytest.mark.parametrize(
    "rule, attrs_only",
    [
        ("{fact: attr.age, op: '>=', value: 40}", True),
        (
            "{all: [{fact: attr.age, op: '>=', value: 40}, {not: {fact: attr.vip, op: '==', "
            "value: true}}]}",
            True,
        ),
        (
            "{any: [{fact: attr.age, op: '>=', value: 40}, {fact: count.purchase.30d, op: '>', "
            "value: 0}]}",
            False,
        ),
        ("{not: {fact: holds.mortgage, op: '==', value: true}}", False),
    ],
)
def test_attribute_only_rules_page_the_same_members_as_full_profiles(
    rule: str, attrs_only: bool
) -> None:
    from models.decisioning.segments import reads_attributes_only

    store = store_with_ages({f"c{i:02d}": 30 + i for i in range(20)})
    extra = [
        Event(f"p-{i}", f"c{i:02d}", "purchase", NOW - 60, None, {}, None, None)
        for i in range(0, 20, 3)
    ]
    store.apply_events(extra, NOW, lambda ev: ev)
    spec = parse_segment_rule(rule)
    assert reads_attributes_only(spec) is attrs_only
    test = compile_segment(spec)
    full, _ = segment_page(store, test, None, 100, NOW)
    assert full, "the rule must pick someone for the comparison to mean anything"
    if attrs_only:
        assert segment_page(store, test, None, 100, NOW, attributes_only=True)[0] == full
