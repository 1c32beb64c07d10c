"""Feature building: encodings, per-candidate facts, and no train/serve skew."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from models.customer.events import parse_event
from models.customer.profile import Profile
from models.decisioning.facts import compile_fact
from models.errors import ModelError
from models.learning.features import FeatureBuilder
from models.learning.simulator import DEMO_FEATURES, decision_context, offer_candidate, simulate

NOW = 1_750_000_000.0
GAP = 1800.0
OFFERS = {"credit_card": "credit", "personal_loan": "credit", "savings_account": "savings"}


@dataclass(frozen=True)
class Cand:
    offer_id: str
    group: str
    channel: str
    placement: str | None = None
    treatment_id: str = "default"
    value: float = 1.0
    tags: tuple[str, ...] = ()


def cands(channel: str = "web") -> list[Cand]:
    return [Cand(o, g, channel) for o, g in OFFERS.items()] + [Cand("new_offer", "other", "sms")]


def apply(p: Profile, *events: dict) -> Profile:
    for i, ev in enumerate(events):
        p.apply(parse_event({"customer_id": p.customer_id, **ev}, i, NOW), NOW, GAP)
    return p


def contact(i: int, kind: str, offer: str, channel: str, age_s: float) -> list[dict]:
    ts = NOW - age_s
    evs = [{"event_id": f"i{i}", "type": "impression", "ts": ts, "channel": channel,
            "offer_id": offer}]  # fmt: skip
    if kind != "impression":
        evs.append({"event_id": f"r{i}", "type": "response", "ts": ts + 5, "channel": channel,
                    "offer_id": offer, "attributes": {"outcome": kind}})  # fmt: skip
    return evs


@pytest.fixture
def profile() -> Profile:
    p = Profile("c1")
    evs = [
        {"event_id": "u", "type": "profile_update", "ts": NOW - 9 * 86400,
         "attributes": {"age": 41, "income": 52000, "segment": "family"}},
        {"event_id": "b", "type": "purchase", "ts": NOW - 8 * 86400,
         "attributes": {"product": "mortgage"}},
        {"event_id": "o", "type": "opt_out", "ts": NOW - 7 * 86400, "channel": "sms",
         "attributes": {"channel": "sms"}},
        {"event_id": "k", "type": "complaint", "ts": NOW - 2 * 86400},
    ]  # fmt: skip
    history = [
        ("rejected", "credit_card", "web", 3 * 86400),
        ("impression", "credit_card", "email", 20 * 86400),
        ("accepted", "savings_account", "web", 3600),
        ("rejected", "personal_loan", "web", 600),
        ("impression", "new_offer", "sms", 8 * 86400),
        ("rejected", "credit_card", "app", 40 * 86400),
    ]
    for i, h in enumerate(history):
        evs.extend(contact(i, *h))
    evs.sort(key=lambda e: e["ts"])
    return apply(p, *evs)


def test_history_facts_match_the_per_candidate_getters(profile: Profile) -> None:
    names = [
        "offer.impressions.7d", "offer.impressions.30d", "offer.rejections.30d",
        "offer.accepts.7d", "channel.impressions.7d", "group.impressions.30d",
        "consent.channel", "offer.value",
    ]  # fmt: skip
    builder = FeatureBuilder(
        [{"name": n, "kind": "numeric"} for n in names]
        + [{"name": "offer.since_impression", "kind": "since", "scale": 86400},
           {"name": "offer.since_rejection", "kind": "since", "scale": 86400}],
        group_of=lambda o: OFFERS.get(o, "other"),
    )  # fmt: skip
    ctx = decision_context("web", NOW)
    X = builder.build(profile, ctx, cands(), NOW)
    for j, name in enumerate(names):
        get = compile_fact(name, lambda o: OFFERS.get(o, "other"))
        expected = [float(get(profile, ctx, c, NOW)) for c in cands()]
        assert X[:, j].tolist() == pytest.approx(expected), name
    for j, name in enumerate(["offer.since_impression", "offer.since_rejection"], len(names)):
        get = compile_fact(name)
        raw = [get(profile, ctx, c, NOW) for c in cands()]
        expected = [0.0 if s is None else math.exp(-s / 86400) for s in raw]
        assert X[:, j].tolist() == pytest.approx(expected, rel=1e-6), name
    assert X[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]  # new_offer was shown 8 days ago
    assert X[:, 1].tolist() == [2.0, 1.0, 1.0, 1.0]  # credit_card also 20 days ago


def test_profile_facts_are_the_same_on_every_row(profile: Profile) -> None:
    builder = FeatureBuilder(DEMO_FEATURES)
    X = builder.build(profile, decision_context("app", NOW), cands("app"), NOW)
    offer_cols = [i for i, c in enumerate(builder.columns) if c.startswith(("offer.", "consent."))]
    other = np.delete(X, offer_cols, axis=1)
    assert (other == other[0]).all()
    assert X.dtype == np.float32 and X.shape == (4, builder.n_columns)


def test_encodings_default_cap_log_since_and_onehot() -> None:
    p = apply(
        Profile("c2"),
        {"event_id": "u", "type": "profile_update", "ts": NOW - 10,
         "attributes": {"age": 130, "income": 99, "segment": "martian"}},
        {"event_id": "p", "type": "purchase", "ts": NOW - 5,
         "attributes": {"product": "credit_card"}},
        {"event_id": "q", "type": "purchase", "ts": NOW - 4,
         "attributes": {"product": "mortgage"}},
    )  # fmt: skip
    builder = FeatureBuilder(
        [
            {"name": "attr.age", "kind": "numeric", "cap": 100},
            {"name": "attr.tenure_years", "kind": "numeric", "default": 3},
            {"name": "attr.income", "kind": "log1p"},
            {"name": "since.complaint", "kind": "since", "default": -1},
            {"name": "holds.credit_card", "kind": "bool"},
            {"name": "attr.missing_flag", "kind": "bool", "default": True},
            {"name": "attr.segment", "kind": "onehot", "values": ["young", "family"]},
            {
                "name": "holdings",
                "kind": "onehot",
                "values": ["credit_card", "savings", "mortgage"],
            },
            {"name": "offer.id", "kind": "onehot", "values": ["credit_card", "new_offer"]},
        ]
    )
    assert builder.columns[6:9] == (
        "attr.segment=young",
        "attr.segment=family",
        "holdings=credit_card",
    )
    X = builder.build(p, {"channel": "web"}, cands()[:1] + cands()[-1:], NOW)
    assert X[0, :6].tolist() == pytest.approx([100.0, 3.0, math.log1p(99), -1.0, 1.0, 1.0])
    assert X[0, 6:8].tolist() == [0.0, 0.0]  # an unlisted value sets no column
    assert X[0, 8:11].tolist() == [1.0, 0.0, 1.0]  # a list value sets one column per element
    assert X[:, 11:].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_no_candidates_gives_an_empty_matrix(profile: Profile) -> None:
    builder = FeatureBuilder(DEMO_FEATURES)
    assert builder.build(profile, decision_context("web", NOW), [], NOW).shape == (0, 43)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "attr.age", "kind": "square"}, "features[0].kind"),
        ({"name": "no.such.fact", "kind": "numeric"}, "features[0].name"),
        ({"name": "group.impressions.7d", "kind": "numeric"}, "features[0].name"),
        ({"name": "attr.segment", "kind": "onehot"}, "features[0].values"),
        ({"name": "attr.age", "kind": "numeric", "default": "old"}, "features[0].default"),
        ({"name": "since.complaint", "kind": "since", "scale": 0}, "features[0].scale"),
        ({"name": "attr.age", "kind": "numeric", "defualt": 3}, "features[0]"),
    ],
)
def test_bad_feature_specs_are_refused(spec: dict, field: str) -> None:
    with pytest.raises(ModelError) as err:
        FeatureBuilder([spec])
    assert err.value.field == field


def test_training_rows_equal_serving_rows(profile: Profile) -> None:
    builder = FeatureBuilder(DEMO_FEATURES)
    ctx = decision_context("web", NOW)
    served = builder.build(profile, ctx, cands(), NOW)
    trained = builder.rows_for_training([(profile, ctx, cands(), NOW), (profile, ctx, [], NOW)])
    np.testing.assert_array_equal(served, trained)


def test_simulated_training_rows_equal_features_rebuilt_from_the_events() -> None:
    """A row the simulator wrote is what serving builds after the same events."""
    sim = simulate(2, seed=11, keep_events=True)
    data = sim.training
    builder = FeatureBuilder(data.features)
    checked = 0
    for i in range(len(data)):
        if data.channel[i] == "web":  # the device of a web visit is not in the row
            continue
        cid, ts = str(data.customer_id[i]), float(data.ts[i])
        p = Profile(cid)
        for k, ev in enumerate(e for e in sim.events if e["customer_id"] == cid):
            if ev["ts"] >= ts:
                break
            p.apply(parse_event(ev, k, now=ts + 1), ev["ts"], GAP)
        cand = offer_candidate(str(data.offer_id[i]), str(data.channel[i]))
        row = builder.build(p, decision_context(str(data.channel[i]), ts), [cand], ts)[0]
        np.testing.assert_array_equal(row, data.X[i])
        checked += 1
    assert checked >= 10
