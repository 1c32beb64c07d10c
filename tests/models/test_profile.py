"""Profile update rules per event type, rolling windows and sessions."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from models.customer.events import Event
from models.customer.profile import HISTORY_MAX, SEEN_IDS, Profile

NOW = 1_800_000_000.0
GAP = 1800.0
_ids = itertools.count()


def e(etype: str, ts: float = NOW, offer: str | None = None, channel: str | None = None, **attrs):
    return Event(str(next(_ids)), "c1", etype, ts, channel, attrs, offer, None)


def apply(p: Profile, *events: Event, now: float = NOW) -> Profile:
    for ev in events:
        p.apply(ev, now, GAP)
    return p


def test_rolling_windows_count_by_age() -> None:
    p = apply(
        Profile("c1"),
        e("page_view", NOW - 60),
        e("page_view", NOW - 2 * 3600),
        e("page_view", NOW - 3 * 86400),
        e("page_view", NOW - 20 * 86400),
        e("page_view", NOW - 40 * 86400),  # beyond the 30-day horizon
    )
    assert p.count("page_view", 3600, NOW) == 1
    assert p.count("page_view", 86400, NOW) == 2
    assert p.count("page_view", 7 * 86400, NOW) == 3
    assert p.count("page_view", 30 * 86400, NOW) == 4
    assert p.count("purchase", 30 * 86400, NOW) == 0


def test_windows_slide_as_time_passes() -> None:
    p = apply(Profile("c1"), e("complaint", NOW))
    assert p.count("complaint", 3600, NOW + 1800) == 1
    assert p.count("complaint", 3600, NOW + 3700) == 0
    assert p.count("complaint", 86400, NOW + 3700) == 1


def test_counters_stay_small_under_many_events() -> None:
    p = Profile("c1")
    for i in range(5000):
        p.apply(e("page_view", NOW - i * 600), NOW, GAP)  # one every 10 minutes, ~35 days
    assert len(p.counters["page_view"]) // 2 <= 60 + 24 + 31
    assert p.count("page_view", 30 * 86400, NOW) == pytest.approx(30 * 144, abs=144)


def test_session_holds_cart_and_pages_and_expires_after_gap() -> None:
    p = apply(
        Profile("c1"),
        e("page_view", NOW - 100, page="/home"),
        e("add_to_cart", NOW - 90, item="a", qty=2, price=5.0),
        e("add_to_cart", NOW - 80, item="b", price=1.0),
        e("remove_from_cart", NOW - 70, item="a"),
    )
    s = p.session
    assert s is not None and s.start == NOW - 100
    assert s.cart == {"a": [1, 5.0], "b": [1, 1.0]}
    assert s.pages == ["/home"]
    assert p.session_active(NOW, GAP)
    assert not p.session_active(NOW + GAP + 1, GAP)
    # A later event after the idle gap starts a new visit; the old cart is abandoned.
    apply(p, e("page_view", NOW + GAP + 10, page="/again"), now=NOW + GAP + 10)
    assert p.session.start == NOW + GAP + 10 and p.session.cart == {}
    assert p.abandoned_cart == [NOW - 70, 6.0, 2]
    assert p.since("cart_abandoned", NOW + GAP + 10) == GAP + 80


def test_purchase_clears_cart_and_adds_holding_and_spend() -> None:
    p = apply(
        Profile("c1"),
        e("add_to_cart", NOW - 10, item="a", price=5.0),
        e("purchase", NOW, amount=12.5, product="savings_account"),
    )
    assert p.session.cart == {}
    assert p.attrs["total_spend"] == 12.5 and p.holdings == ["savings_account"]


def test_credit_check_and_complaint_facts() -> None:
    p = apply(
        Profile("c1"),
        e("credit_check", NOW - 86400, result="fail"),
        e("credit_check", NOW - 3600, result="pass"),
        e("complaint", NOW - 120),
    )
    assert p.since("credit_check:fail", NOW) == 86400
    assert p.attrs["credit_check_result"] == "pass"
    assert p.since("complaint", NOW) == 120
    assert p.since("purchase", NOW) is None


def test_late_credit_check_does_not_override_newer_result() -> None:
    p = apply(
        Profile("c1"),
        e("credit_check", NOW - 60, result="pass"),
        e("credit_check", NOW - 86400, result="fail"),
    )
    assert p.attrs["credit_check_result"] == "pass"


def test_consents_opt_out_and_in() -> None:
    by_attribute = Event("x1", "c1", "opt_out", NOW, "web", {"channel": "email"}, None, None)
    p = apply(Profile("c1"), e("opt_out", channel="sms"), by_attribute)
    assert not p.consented("sms") and not p.consented("email") and p.consented("web")
    apply(p, e("opt_out", NOW, channel="all"))
    assert not p.consented("web")
    apply(p, e("opt_in", NOW, channel="web"))
    assert p.consented("web") and not p.consented("app")
    apply(p, e("opt_in", NOW, channel="all"))
    assert p.consented("sms") and p.consented("app")


def test_profile_update_sets_and_unsets() -> None:
    p = apply(Profile("c1"), e("profile_update", age=30, segment="young"))
    apply(p, e("profile_update", segment=None))
    assert p.attrs == {"age": 30}


def test_impressions_and_responses_form_the_contact_history() -> None:
    p = apply(
        Profile("c1"),
        e("impression", NOW - 30, offer="card", channel="web"),
        e("response", NOW - 20, offer="card", channel="web", outcome="rejected"),
        e("impression", NOW - 40, offer="loan", channel="email"),  # late: sorted in place
    )
    assert [h[1:] for h in p.history] == [
        ["loan", "email", "impression"],
        ["card", "web", "impression"],
        ["card", "web", "rejected"],
    ]
    assert len(p.contacts(NOW, 3600)) == 2
    assert p.since("response:rejected", NOW) == 20


def test_history_is_bounded() -> None:
    p = Profile("c1")
    for i in range(HISTORY_MAX + 50):
        p.record_contact(NOW + i, "o", "web", "impression")
    assert len(p.history) == HISTORY_MAX
    assert p.history[-1][0] == NOW + HISTORY_MAX + 49


def test_duplicate_event_ids_are_ignored() -> None:
    p = Profile("c1")
    ev = e("page_view")
    assert p.apply(ev, NOW, GAP) is True
    assert p.apply(ev, NOW, GAP) is False
    assert p.count("page_view", 3600, NOW) == 1


def test_duplicates_are_remembered_for_a_bounded_number_and_time() -> None:
    p = Profile("c1")
    first = e("page_view")
    p.apply(first, NOW, GAP)
    assert p.is_duplicate(first.event_id, NOW + 3600)
    assert not p.is_duplicate(first.event_id, NOW + 2 * 86400)  # past the TTL
    for _ in range(SEEN_IDS):
        p.apply(e("page_view"), NOW, GAP)
    assert not p.is_duplicate(first.event_id, NOW)  # pushed out of the ring
    assert len(p.seen) == SEEN_IDS * 12


def test_remembering_an_id_forgets_the_expired_ones_and_keeps_the_rest() -> None:
    p = Profile("c1")
    old, recent = e("page_view", NOW - 2 * 86400), e("page_view", NOW)
    p.apply(old, NOW - 2 * 86400, GAP)
    p.apply(recent, NOW - 60, GAP)
    p.apply(e("page_view"), NOW, GAP)  # the first id is past the TTL by now: dropped
    assert len(p.seen) == 2 * 12
    assert p.is_duplicate(recent.event_id, NOW)
    assert not p.is_duplicate(old.event_id, NOW - 2 * 86400)


def test_packed_profile_is_the_msgpack_older_snapshots_hold() -> None:
    cart = e("add_to_cart", item="x", qty=2, price=9.5)
    p = apply(Profile("c1"), e("page_view", page="/a"), cart)
    p.record_contact(NOW, "o1", "web", "impression")
    blob = p.pack()
    fields = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    assert blob == msgpack.packb(fields, use_bin_type=True)
    assert Profile.unpack("c1", msgpack.packb(fields, use_bin_type=True)) == p


def test_pack_roundtrip_keeps_everything() -> None:
    p = apply(
        Profile("c1"),
        e("page_view", NOW - 5, page="/x"),
        e("add_to_cart", NOW - 4, item="a", price=2.0),
        e("opt_out", channel="sms"),
        e("response", offer="o", channel="web", outcome="accepted"),
    )
    q = Profile.unpack("c1", p.pack())
    assert q.to_dict(NOW, GAP) == p.to_dict(NOW, GAP)
    assert q.is_duplicate("not-seen", NOW) is False


def test_packed_profile_is_compact() -> None:
    p = apply(
        Profile("c1"),
        *(e("page_view", NOW - i * 300, page=f"/p{i}") for i in range(10)),
        e("profile_update", age=40, income=52000, segment="family"),
        e("impression", offer="credit_card", channel="web"),
    )
    assert len(p.pack()) < 900
