"""Contact policies: caps per offer, group, channel and overall, and suppression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.customer.events import Event
from models.customer.profile import Profile
from models.decisioning.arbitration import decide
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest

NOW = 1_748_865_600.0  # Monday 2 June 2025, 12:00 UTC
DAY = 86400.0
VALUES = {"card": 100, "loan": 90, "saver": 50, "tip": 20}


class ValueOrderScorer:
    """Same propensity for every candidate, so offers rank by value."""

    version = "const"

    def features(
        self, profile: Profile, context: dict, cands: Sequence[Any], now: float
    ) -> np.ndarray:
        return np.full((len(cands), 1), 0.5, dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0]


def catalog(*policies: dict) -> Catalog:
    offers = []
    for oid, value in VALUES.items():
        group = {"card": "credit", "loan": "credit", "saver": "savings", "tip": "service"}[oid]
        offers.append(
            {
                "id": oid,
                "group": group,
                "value": value,
                "tags": ["sales"] if oid != "tip" else ["service"],
                "treatments": [
                    {"id": f"{oid}_{ch}", "channel": ch} for ch in ("web", "app", "email")
                ],
            }
        )
    return load_catalog(
        {
            "version": "caps-1",
            "channels": {
                "web": {"kind": "inbound", "cost": 0},
                "app": {"kind": "inbound", "cost": 0},
                "email": {"kind": "outbound", "cost": 0.02},
            },
            "offers": offers,
            "contact_policies": list(policies),
        }
    )


def ask(
    cat: Catalog, profile: Profile, channel: str, now: float = NOW, limit: int = 1
) -> DecisionRecord:
    req = DecideRequest("c1", (channel,), limit=limit, explain=True)
    return decide(profile, req, cat, ValueOrderScorer(), now)


def serve(
    cat: Catalog, profile: Profile, channel: str, now: float = NOW, limit: int = 1
) -> list[str]:
    """Decide, then record the impressions as the server does (impressions: on_decide)."""
    decision = ask(cat, profile, channel, now, limit)
    for offer in decision.offers:
        profile.record_contact(now, offer.offer_id, offer.channel, "impression")
    return [o.offer_id for o in decision.offers]


def removed_by(decision: DecisionRecord, offer_id: str) -> str | None:
    for t in decision.trace or ():
        if t["offer_id"] == offer_id and not t["chosen"]:
            return t["rule"]
    return None


EMAIL_WEEKLY = {"id": "email_weekly", "reason": "1 email a week", "scope": "channel",
                "channels": ["email"], "max": 1, "period": "7d"}  # fmt: skip
OFFER_DAILY = {"id": "offer_daily", "reason": "an offer 3 times a day", "scope": "offer",
               "max": 3, "period": "1d"}  # fmt: skip


def test_email_cap_holds_across_consecutive_decides() -> None:
    cat, p = catalog(EMAIL_WEEKLY), Profile("c1")
    assert serve(cat, p, "email") == ["card"]
    second = ask(cat, p, "email", NOW + 60)
    assert second.offers == []
    assert removed_by(second, "loan") == "email_weekly"


def test_email_cap_lifts_after_its_period() -> None:
    cat, p = catalog(EMAIL_WEEKLY), Profile("c1")
    serve(cat, p, "email")
    assert serve(cat, p, "email", NOW + 6 * DAY) == []
    assert serve(cat, p, "email", NOW + 7 * DAY + 1) == ["card"]


def test_channel_cap_ignores_contacts_on_other_channels() -> None:
    cat, p = catalog(EMAIL_WEEKLY), Profile("c1")
    for i in range(3):
        serve(cat, p, "web", NOW + i)
    assert serve(cat, p, "email", NOW + 10) == ["card"]


def test_offer_cap_counts_impressions_across_channels() -> None:
    cat, p = catalog(OFFER_DAILY), Profile("c1")
    assert serve(cat, p, "web") == ["card"]
    assert serve(cat, p, "app", NOW + 1) == ["card"]
    assert serve(cat, p, "web", NOW + 2) == ["card"]
    fourth = ask(cat, p, "email", NOW + 3)
    assert [o.offer_id for o in fourth.offers] == ["loan"]
    assert removed_by(fourth, "card") == "offer_daily"


def test_offer_cap_restricted_to_a_channel_counts_only_that_channel() -> None:
    web_only = {**OFFER_DAILY, "id": "web_offer_daily", "max": 1, "channels": ["web"]}
    cat, p = catalog(web_only), Profile("c1")
    assert serve(cat, p, "web") == ["card"]
    assert serve(cat, p, "web", NOW + 1) == ["loan"]
    assert serve(cat, p, "app", NOW + 2) == ["card"]  # app is neither counted nor capped


def test_group_cap_maps_history_offers_to_their_group() -> None:
    group_daily = {"id": "credit_daily", "reason": "one credit offer a day", "scope": "group",
                   "max": 1, "period": "1d", "applies_to": {"groups": ["credit"]}}  # fmt: skip
    cat, p = catalog(group_daily), Profile("c1")
    assert serve(cat, p, "web") == ["card"]
    second = ask(cat, p, "web", NOW + 1)
    assert [o.offer_id for o in second.offers] == ["saver"]
    assert removed_by(second, "loan") == "credit_daily"


def test_overall_cap_over_tagged_offers() -> None:
    sales_daily = {"id": "sales_daily", "reason": "two sales contacts a day", "scope": "all",
                   "max": 2, "period": "1d", "applies_to": {"tags": ["sales"]}}  # fmt: skip
    cat, p = catalog(sales_daily), Profile("c1")
    assert serve(cat, p, "web") == ["card"]
    assert serve(cat, p, "email", NOW + 1) == ["card"]
    assert serve(cat, p, "app", NOW + 2) == ["tip"]  # only the non-sales offer is left


def test_suppression_after_n_rejections_within_the_period() -> None:
    suppress = {"id": "two_strikes", "reason": "rejected twice", "scope": "offer",
                "count": "rejected", "max": 2, "period": "30d"}  # fmt: skip
    cat = catalog(suppress)
    p = Profile("c1")
    for i, ts in enumerate((NOW - 40 * DAY, NOW - 2 * DAY)):
        p.apply(Event(f"r{i}", "c1", "response", ts, "web", {"outcome": "rejected"}, "card", None),
                NOW, 1800)  # fmt: skip
    assert serve(cat, p, "web") == ["card"]  # one rejection is older than 30 days
    p.apply(Event("r3", "c1", "response", NOW - DAY, "web", {"outcome": "rejected"}, "card", None),
            NOW, 1800)  # fmt: skip
    third = ask(cat, p, "web", NOW + 1)
    assert [o.offer_id for o in third.offers] == ["loan"]
    assert removed_by(third, "card") == "two_strikes"


def test_caps_count_offers_chosen_in_the_same_decision() -> None:
    cat, p = catalog(EMAIL_WEEKLY), Profile("c1")
    decision = ask(cat, p, "email", limit=3)
    assert [o.offer_id for o in decision.offers] == ["card"]
    assert removed_by(decision, "saver") == "email_weekly"


def test_limit_returns_several_offers_when_no_cap_applies() -> None:
    assert serve(catalog(), Profile("c1"), "web", limit=3) == ["card", "saver", "tip"]
