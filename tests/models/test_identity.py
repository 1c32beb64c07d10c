"""Identity resolution: identifiers, the identity table, link plans and profile merges."""

from __future__ import annotations

import itertools

import pytest

from models.customer.events import Event, parse_event_batch
from models.customer.merge import merge_profiles
from models.customer.profile import HISTORY_MAX, Profile
from models.errors import IdentityConflict, ValidationError
from models.identity.config import IdentityConfig, identifier_key, new_profile_id, parse_identifiers
from models.identity.plan import LinkPlan, plan_link
from models.identity.table import IdentityRecord, IdentityTable
from models.settings import SettingsError

NOW = 1_800_000_000.0
GAP = 1800.0
DAY = 86400.0
CONFIG = IdentityConfig()
_ids = itertools.count()


def e(etype: str, ts: float = NOW, offer: str | None = None, channel: str | None = None, **attrs):
    return Event(f"e{next(_ids)}", "c", etype, ts, channel, attrs, offer, None)


def profile(pid: str, *events: Event) -> Profile:
    p = Profile(pid)
    for ev in events:
        p.apply(ev, NOW, GAP)
    return p


def link(table: IdentityTable, identifiers: dict[str, str], ts: float = NOW) -> LinkPlan:
    """Resolve, plan and carry out the identity-map side of a link on one table."""
    keys = [identifier_key(t, v) for t, v in identifiers.items()]
    resolved = table.resolve(keys)
    held = table.records_of({pid for pid in resolved.values() if pid})
    plan = plan_link(identifiers, resolved, CONFIG, held)
    if plan.conflict is None:
        for key in plan.claims:
            assert table.claim(key, plan.survivor, ts) == plan.survivor
        for pid in plan.absorbed:
            table.repoint_profile(pid, plan.survivor)
        table.release(plan.dropped)
    return plan


# -- merges ------------------------------------------------------------------------


def test_abandoned_cart_visit_follows_the_customer_into_their_account() -> None:
    known = profile(
        "C1",
        e("impression", NOW - 3 * DAY, offer="card", channel="email"),
        e("profile_update", NOW - 3 * DAY, segment="gold"),
    )
    anon = profile(
        "anon-1",
        e("page_view", NOW - 600, page="/loans"),
        e("page_view", NOW - 500, page="/loans/car"),
        e("add_to_cart", NOW - 400, item="car-loan", price=250.0),
        e("impression", NOW - 300, offer="loan-promo", channel="web"),
    )
    merged = merge_profiles(known, anon, NOW, GAP)

    assert merged is known and merged.customer_id == "C1"
    assert merged.session is not None
    assert merged.session.cart == {"car-loan": [1, 250.0]}
    assert merged.session.pages == ["/loans", "/loans/car"]
    assert merged.count("page_view", 3600, NOW) == 2
    assert merged.count("add_to_cart", 3600, NOW) == 1
    assert merged.count("impression", 7 * DAY, NOW) == 2
    assert [h[1] for h in merged.history] == ["card", "loan-promo"]
    assert merged.attrs["segment"] == "gold"
    assert merged.first_seen == NOW - 3 * DAY and merged.last_seen == NOW - 300


def test_counters_add_and_windows_match_one_profile_that_saw_every_event() -> None:
    times_a = [NOW - 60, NOW - 2 * 3600, NOW - 3 * DAY, NOW - 29 * DAY]
    times_b = [NOW - 30, NOW - 5 * 3600, NOW - 20 * DAY, NOW - 40 * DAY]
    a = profile("a", *(e("page_view", t) for t in times_a))
    b = profile("b", *(e("page_view", t) for t in times_b))
    both = profile("x", *(e("page_view", t) for t in times_a + times_b))

    merged = merge_profiles(a, b, NOW, GAP)

    assert merged.counters["page_view"] == both.counters["page_view"]
    for window, expected in ((3600, 2), (DAY, 4), (7 * DAY, 5), (30 * DAY, 7)):
        assert merged.count("page_view", window, NOW) == expected


def test_consents_keep_the_most_restrictive_choice() -> None:
    s = Profile("s", consents={"all": True, "email": True})
    a = Profile("a", consents={"email": False, "sms": True})
    merged = merge_profiles(s, a, NOW, GAP)
    assert merged.consents == {"all": True, "email": False, "sms": True}
    assert not merged.consented("email") and merged.consented("sms")

    opted_out = merge_profiles(Profile("s", consents={"all": True}),
                               Profile("a", consents={"all": False}), NOW, GAP)  # fmt: skip
    assert not opted_out.consented("web")


def test_absorbed_attribute_wins_only_when_its_profile_update_is_newer() -> None:
    def pair(anon_update_age: float) -> Profile:
        s = profile("s", e("profile_update", NOW - 1000, city="Paris", segment="gold"))
        a = profile("a", e("profile_update", NOW - anon_update_age, city="Lyon", nickname="jo"))
        return merge_profiles(s, a, NOW, GAP)

    newer = pair(10)
    assert newer.attrs == {"city": "Lyon", "segment": "gold", "nickname": "jo"}
    older = pair(5000)
    assert older.attrs == {"city": "Paris", "segment": "gold", "nickname": "jo"}


def test_total_spend_adds_and_credit_result_follows_the_newer_check() -> None:
    s = profile(
        "s", e("purchase", NOW - 100, amount=10.5), e("credit_check", NOW - 50, result="pass")
    )
    a = profile(
        "a", e("purchase", NOW - 200, amount=4.5), e("credit_check", NOW - 10, result="fail")
    )
    merged = merge_profiles(s, a, NOW, GAP)
    assert merged.attrs["total_spend"] == 15.0
    assert merged.attrs["credit_check_result"] == "fail"


def test_history_union_counts_impressions_from_both_for_caps() -> None:
    shared = e("impression", NOW - 500, offer="card", channel="web")
    s = profile("s", e("impression", NOW - 900, offer="card", channel="web"), shared)
    a = profile("a", shared._replace(event_id="retry"), e("impression", NOW - 100,
                                                         offer="card", channel="app"))  # fmt: skip
    merged = merge_profiles(s, a, NOW, GAP)
    assert [h[0] for h in merged.history] == [NOW - 900, NOW - 500, NOW - 100]
    assert len(merged.contacts(NOW, 3600)) == 3


def test_merged_history_is_bounded_like_a_live_profile() -> None:
    s = profile("s", *(e("impression", NOW - 2 * i, offer="o") for i in range(HISTORY_MAX)))
    a = profile("a", *(e("impression", NOW - 2 * i - 1, offer="o") for i in range(HISTORY_MAX)))
    merged = merge_profiles(s, a, NOW, GAP)
    assert len(merged.history) == HISTORY_MAX
    assert merged.history[0][0] == NOW - HISTORY_MAX + 1  # the newest entries, from both


def test_seen_ids_union_keeps_retries_to_either_id_deduplicated() -> None:
    s = profile("s", Event("sent-to-account", "s", "page_view", NOW - 60, None, {}, None, None))
    a = profile("a", Event("sent-to-cookie", "a", "page_view", NOW - 30, None, {}, None, None))
    merged = merge_profiles(s, a, NOW, GAP)
    assert merged.is_duplicate("sent-to-account", NOW)
    assert merged.is_duplicate("sent-to-cookie", NOW)
    assert not merged.is_duplicate("new", NOW)


def test_repeating_a_merge_does_not_double_count() -> None:
    s = profile("s", e("page_view", NOW - 60))
    a = profile("a", e("page_view", NOW - 30), e("purchase", NOW - 20, amount=5))
    merge_profiles(s, a, NOW, GAP)
    merge_profiles(s, a, NOW, GAP)
    assert s.count("page_view", 3600, NOW) == 2
    assert s.attrs["total_spend"] == 5


def test_an_older_visit_beyond_the_gap_closes_and_leaves_its_cart_abandoned() -> None:
    s = profile("s", e("page_view", NOW - 60, page="/home"))
    a = profile("a", e("add_to_cart", NOW - 3 * GAP, item="tv", price=300.0, qty=2))
    merged = merge_profiles(s, a, NOW, GAP)
    assert merged.session is not None and merged.session.pages == ["/home"]
    assert merged.session.cart == {}
    assert merged.abandoned_cart == [NOW - 3 * GAP, 600.0, 2]
    assert merged.since("cart_abandoned", NOW) == 3 * GAP


def test_joined_visits_add_cart_quantities() -> None:
    s = profile("s", e("add_to_cart", NOW - 100, item="tv", price=300.0))
    a = profile("a", e("add_to_cart", NOW - 50, item="tv", price=280.0),
                e("add_to_cart", NOW - 40, item="hdmi", price=10.0))  # fmt: skip
    merged = merge_profiles(s, a, NOW, GAP)
    assert merged.session is not None
    assert merged.session.cart == {"tv": [2, 280.0], "hdmi": [1, 10.0]}
    assert [ev[0] for ev in merged.session.events] == [NOW - 100, NOW - 50, NOW - 40]


def test_holdings_union() -> None:
    merged = merge_profiles(Profile("s", holdings=["card"]),
                            Profile("a", holdings=["loan", "card"]), NOW, GAP)  # fmt: skip
    assert merged.holdings == ["card", "loan"]


# -- link plans --------------------------------------------------------------------


def test_new_anonymous_identifier_is_claimed_for_a_new_profile() -> None:
    plan = plan_link({"cookie": "abc"}, {"cookie:abc": None}, CONFIG)
    assert plan.new_profile and plan.survivor == new_profile_id("cookie", "abc")
    assert plan.survivor.startswith("anon-")
    assert plan.claims == ("cookie:abc",) and plan.absorbed == ()


def test_new_known_identifier_names_the_profile_by_preference() -> None:
    plan = plan_link({"cookie": "abc", "account": "C1"}, {}, CONFIG)
    assert plan.survivor == "C1"  # account is the customer_id type
    assert set(plan.claims) == {"cookie:abc", "account:C1"}
    assert new_profile_id("email_sha256", "ff").startswith("known-")


def test_identify_merges_the_anonymous_profile_into_the_known_one() -> None:
    table = IdentityTable()
    table.claim("account:C1", "C1", NOW - DAY)
    table.claim("cookie:abc", "anon-x", NOW - 3 * DAY)  # older, but anonymous
    table.claim("device:d1", "anon-x", NOW - 2 * DAY)

    plan = link(table, {"cookie": "abc", "account": "C1"})

    assert (plan.survivor, plan.absorbed, plan.claims) == ("C1", ("anon-x",), ())
    assert plan.repoint == ("cookie:abc", "device:d1")  # device was not in the request
    assert table.resolve(["cookie:abc", "device:d1"]) == {"cookie:abc": "C1", "device:d1": "C1"}


def test_several_anonymous_profiles_merge_into_the_oldest() -> None:
    held = [IdentityRecord("cookie:new", "anon-b", NOW), IdentityRecord("device:d", "anon-a", 5.0)]
    resolved = {"cookie:new": "anon-b", "device:d": "anon-a"}
    plan = plan_link({"cookie": "new", "device": "d"}, resolved, CONFIG, held)
    assert (plan.survivor, plan.absorbed) == ("anon-a", ("anon-b",))


def test_repeated_identify_is_a_no_op() -> None:
    table = IdentityTable()
    link(table, {"cookie": "abc", "account": "C1"})
    plan = link(table, {"cookie": "abc", "account": "C1"})
    assert plan.noop and plan.survivor == "C1"


def test_two_accounts_are_a_conflict_and_nothing_is_merged() -> None:
    table = IdentityTable()
    table.claim("account:C1", "C1", NOW - DAY)
    table.claim("cookie:abc", "C1", NOW - DAY)
    table.claim("account:C2", "C2", NOW - DAY)

    plan = link(table, {"cookie": "abc", "account": "C2"})  # C1's browser says it is C2

    assert plan.conflict == "account" and plan.survivor is None
    assert (plan.absorbed, plan.claims, plan.repoint) == ((), (), ())
    assert table.resolve(["cookie:abc", "account:C2"]) == {"cookie:abc": "C1", "account:C2": "C2"}
    err = plan.conflict_error("events[2].identifiers")
    assert isinstance(err, IdentityConflict) and err.code == "identity_conflict"
    assert err.field == "events[2].identifiers.account"


def test_a_second_account_for_a_known_profile_is_a_conflict_even_when_unmapped() -> None:
    held = [IdentityRecord("account:C1", "C1", 1.0), IdentityRecord("cookie:abc", "C1", 1.0)]
    plan = plan_link({"cookie": "abc", "account": "C9"}, {"cookie:abc": "C1"}, CONFIG, held)
    assert plan.conflict == "account" and not plan.claims


def test_linking_beyond_max_identifiers_drops_the_oldest_anonymous_ones() -> None:
    config = IdentityConfig(max_identifiers=3)
    held = [
        IdentityRecord("account:C1", "C1", 1.0),
        IdentityRecord("cookie:old", "C1", 2.0),
        IdentityRecord("cookie:mid", "C1", 3.0),
    ]
    plan = plan_link({"account": "C1", "device": "d"}, {"account:C1": "C1"}, config, held)
    assert plan.survivor == "C1" and plan.claims == ("device:d",)
    assert plan.dropped == ("cookie:old",)  # the known account is never dropped


def test_identity_table_backstop_keeps_each_profile_bounded() -> None:
    table = IdentityTable(IdentityConfig(max_identifiers=2))
    table.claim("account:C1", "C1", 1.0)
    table.claim("cookie:a", "C1", 2.0)
    table.claim("cookie:b", "C1", 3.0)
    assert table.resolve(["account:C1", "cookie:a", "cookie:b"]) == {
        "account:C1": "C1", "cookie:a": None, "cookie:b": "C1",
    }  # fmt: skip


def test_identity_table_claim_race_returns_the_winner() -> None:
    table = IdentityTable()
    assert table.claim("cookie:abc", "anon-1", NOW) == "anon-1"
    assert table.claim("cookie:abc", "C1", NOW) == "anon-1"


def test_identity_table_snapshot_round_trip_and_erasure() -> None:
    table = IdentityTable()
    table.claim("account:C1", "C1", 1.0)
    table.claim("cookie:a", "C1", 2.0)
    table.claim("cookie:z", "anon-z", 3.0)
    restored = IdentityTable.from_state(table.to_state())
    assert restored.records_of(["C1"]) == table.records_of(["C1"])
    assert sorted(restored.forget_profile("C1")) == ["account:C1", "cookie:a"]
    assert restored.resolve(["cookie:a", "cookie:z"]) == {"cookie:a": None, "cookie:z": "anon-z"}
    assert len(restored) == 1


def test_profile_ids_are_deterministic() -> None:
    assert new_profile_id("cookie", "abc") == new_profile_id("cookie", "abc")
    assert new_profile_id("cookie", "abc") != new_profile_id("device", "abc")


# -- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"cookie": ""}, "events[2].identifiers.cookie"),
        ({"cookie": 5}, "events[2].identifiers.cookie"),
        ({"cookie": "x" * 257}, "events[2].identifiers.cookie"),
        ({"phone": "1"}, "events[2].identifiers.phone"),
        ({}, "events[2].identifiers"),
        (["cookie"], "events[2].identifiers"),
        ({f"t{i}": "v" for i in range(11)}, "events[2].identifiers"),
    ],
)
def test_bad_identifiers_name_the_field(raw, field) -> None:
    with pytest.raises(ValidationError) as ei:
        parse_identifiers(raw, "events[2].identifiers", CONFIG)
    assert ei.value.field == field


def test_events_carry_identifiers_instead_of_a_customer_id() -> None:
    body = {"events": [
        {"event_id": "1", "type": "identify", "identifiers": {"cookie": "c", "account": "C1"}},
        {"event_id": "2", "customer_id": "C1", "type": "page_view"},
    ]}  # fmt: skip
    identify, page = parse_event_batch(body, 10, NOW)
    assert (identify.customer_id, identify.identifiers) == ("", {"cookie": "c", "account": "C1"})
    assert page.identifiers is None

    body["events"][0]["identifiers"] = {"cookie": ""}
    with pytest.raises(ValidationError) as ei:
        parse_event_batch(body, 10, NOW)
    assert ei.value.field == "events[0].identifiers.cookie"


def test_identify_needs_identifiers_and_other_events_need_a_customer() -> None:
    for ev, field in (
        ({"event_id": "1", "customer_id": "C1", "type": "identify"}, "events[0].identifiers"),
        ({"event_id": "1", "type": "page_view"}, "events[0].customer_id"),
    ):
        with pytest.raises(ValidationError) as ei:
            parse_event_batch({"events": [ev]}, 10, NOW)
        assert ei.value.field == field


def test_identity_settings_are_validated_with_clear_messages() -> None:
    cfg = IdentityConfig.from_settings_value({"types": {"crm": "known", "cookie": "anonymous"}})
    assert cfg.customer_id_type is None and cfg.is_known("crm")
    for bad, word in (
        ({"types": {"cookie": "secret"}}, "identity.types.cookie"),
        ({"types": {"Bad:Name": "known"}}, "Bad:Name"),
        ({"max_identifiers": 0}, "max_identifiers"),
        ({"colour": 1}, "colour"),
        ({"customer_id_type": "cookie"}, "customer_id_type"),
        ("cookie", "mapping"),
    ):
        with pytest.raises(SettingsError, match=word):
            IdentityConfig.from_settings_value(bad)
