"""Experiments: assignment, share changes that move the fewest customers, arm policies."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from models.customer.profile import Profile
from models.decisioning.arbitration import decide
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.experiments import BUCKETS, bucket_of, initial_allocation, rebalance
from models.decisioning.request import parse_decide_request
from models.errors import CatalogError

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "catalog.yaml"
NOW = 1_748_865_600.0
CUSTOMERS = [f"cust-{i}" for i in range(20_000)]


def catalog(arms: list[tuple[str, str, float]], **extra: object) -> Catalog:
    data = yaml.safe_load(DEMO.read_text())
    data["experiments"] = [
        {"name": "exp", "control": arms[0][0],
         "arms": [{"name": n, "policy": p, "share": s} for n, p, s in arms]}
    ]  # fmt: skip
    data.update(extra)
    return load_catalog(data)


def arms_of(cat: Catalog, channel: str = "web") -> dict[str, str]:
    out = {}
    for cid in CUSTOMERS:
        a = cat.experiments.assign(cid, channel)
        out[cid] = a.arm if a is not None else None
    return out


class Scorer:
    version = "fixed"

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def features(self, profile, context, cands, now):
        import numpy as np

        return np.full((len(cands), 1), self.p, dtype=np.float32)

    def predict(self, X):
        return X[:, 0].astype(float)


def req(cid: str, channel: str = "web", limit: int = 1):
    return parse_decide_request({"customer_id": cid, "channel": channel, "limit": limit})


def person(cid: str) -> Profile:
    return Profile(cid, attrs={"age": 40, "income": 50000})


# -- assignment ---------------------------------------------------------------------


def test_buckets_are_stable_and_arms_get_their_shares() -> None:
    assert bucket_of("exp", "alice") == bucket_of("exp", "alice")
    salts = {bucket_of(f"salt-{i}", "alice") for i in range(20)}
    assert len(salts) > 15  # another salt deals the customer again
    cat = catalog([("a", "full", 0.5), ("b", "no_message", 0.3), ("c", "random", 0.2)])
    counts = Counter(arms_of(cat).values())
    for arm, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(counts[arm] / len(CUSTOMERS) - share) < 0.02
    # The same customer is in the same arm on every channel and in a reloaded copy.
    again = load_catalog(cat.to_dict())
    assert arms_of(again, "email") == arms_of(cat, "web")


def test_shares_50_50_to_60_40_move_about_ten_percent_of_customers() -> None:
    before = catalog([("a", "full", 0.5), ("b", "no_message", 0.5)])
    data = before.to_dict()
    data["experiments"][0]["arms"][0]["share"] = 0.6
    data["experiments"][0]["arms"][1]["share"] = 0.4
    after = load_catalog(data)
    old, new = arms_of(before), arms_of(after)
    moved = [c for c in CUSTOMERS if old[c] != new[c]]
    assert 0.08 < len(moved) / len(CUSTOMERS) < 0.12
    assert all(old[c] == "b" and new[c] == "a" for c in moved)  # only b -> a
    # Without the stored allocation, the previous catalogue's is used the same way.
    plain = copy.deepcopy(data)
    del plain["experiments"][0]["allocation"]
    assert arms_of(load_catalog(plain, previous=before)) == new
    # Back to 50/50: again only the surplus moves.
    back = after.to_dict()
    back["experiments"][0]["arms"][0]["share"] = 0.5
    back["experiments"][0]["arms"][1]["share"] = 0.5
    third = arms_of(load_catalog(back))
    assert sum(new[c] != third[c] for c in CUSTOMERS) / len(CUSTOMERS) < 0.12


def test_rebalance_moves_exactly_the_surplus_buckets() -> None:
    old = initial_allocation([0.2, 0.3, 0.5])
    new = rebalance(old, [0.25, 0.25, 0.5])
    assert sum(a != b for a, b in zip(old, new)) == BUCKETS // 20
    assert [new.count(i) for i in range(3)] == [2500, 2500, 5000]


def test_a_new_arm_takes_buckets_only_from_arms_that_shrink() -> None:
    before = catalog([("a", "full", 0.5), ("b", "no_message", 0.5)])
    data = before.to_dict()
    del data["experiments"][0]["allocation"]
    data["experiments"][0]["arms"] = [
        {"name": "a", "policy": "full", "share": 0.5},
        {"name": "b", "policy": "no_message", "share": 0.4},
        {"name": "c", "policy": "random", "share": 0.1},
    ]
    old, new = arms_of(before), arms_of(load_catalog(data, previous=before))
    moved = [c for c in CUSTOMERS if old[c] != new[c]]
    assert all(old[c] == "b" and new[c] == "c" for c in moved)
    assert 0.08 < len(moved) / len(CUSTOMERS) < 0.12


def test_default_control_group_holds_out_its_share_on_the_channels_it_covers() -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["control_group"] = {"share": 0.02, "channels": ["web", "email"]}
    cat = load_catalog(data)
    web = Counter(arms_of(cat, "web").values())
    assert abs(web["control"] / len(CUSTOMERS) - 0.02) < 0.005
    assert set(web) == {"control", "nba"}
    assert set(arms_of(cat, "sms").values()) == {None}
    held = next(c for c in CUSTOMERS if cat.experiments.assign(c, "web").arm == "control")
    d = decide(person(held), req(held), cat, Scorer(), NOW)
    assert d.offers == [] and (d.experiment, d.arm, d.policy) == ("control", "control",
                                                                   "no_message")  # fmt: skip


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda e: e["arms"][0].update(share=0.7), "experiments[exp].arms", "add up to 1.2"),
        (lambda e: e.update(control="ghost"), "experiments[exp].control", "ghost"),
        (lambda e: e["arms"][1].update(policy="guess"), "experiments[exp].arms[b].policy",
         "guess"),
        (lambda e: e.update(channels=["fax"]), "experiments[exp].channels", "fax"),
        (lambda e: e.update(allocation=[[0, 10000, "ghost"]]), "experiments[exp].allocation[0]",
         "ghost"),
        (lambda e: e["arms"][1].update(name="a"), "experiments[exp].arms[a].name", "twice"),
    ],
)  # fmt: skip
def test_bad_experiments_are_refused_naming_the_field(change, field: str, words: str) -> None:
    data = catalog([("a", "full", 0.5), ("b", "no_message", 0.5)]).to_dict()
    change(data["experiments"][0])
    with pytest.raises(CatalogError) as err:
        load_catalog(data)
    assert err.value.field == field and words in err.value.message


def test_control_group_share_out_of_range_is_refused() -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["control_group"] = {"share": 1.5}
    with pytest.raises(CatalogError) as err:
        load_catalog(data)
    assert err.value.field == "control_group.share"


# -- policy variants ----------------------------------------------------------------


def first_in(cat: Catalog, arm: str) -> str:
    return next(c for c in CUSTOMERS if cat.experiments.assign(c, "web").arm == arm)


def test_no_message_arm_chooses_nothing_but_still_scores_candidates() -> None:
    cat = catalog([("hold", "no_message", 0.5), ("full", "full", 0.5)])
    cid = first_in(cat, "hold")
    d = decide(person(cid), req(cid), cat, Scorer(0.5), NOW)
    assert d.offers == [] and d.probability == 1.0 and d.candidates
    other = first_in(cat, "full")
    assert decide(person(other), req(other), cat, Scorer(0.5), NOW).offers


def test_random_arm_chooses_uniformly_with_honest_probabilities() -> None:
    cat = catalog([("rnd", "random", 0.5), ("full", "full", 0.5)])
    cid = first_in(cat, "rnd")
    seen: Counter = Counter()
    probs = {}
    n = 600
    for _ in range(n):
        d = decide(person(cid), req(cid), cat, Scorer(0.5), NOW)
        o = d.offers[0]
        seen[(o.offer_id, o.channel, o.treatment)] += 1
        probs[(o.offer_id, o.channel, o.treatment)] = o.probability
    assert len(seen) > 1
    assert abs(sum(probs.values()) - 1.0) < 1e-6  # every action it can take was taken
    for action, count in seen.items():
        assert abs(count / n - probs[action]) < 0.08


def test_propensity_only_arm_ignores_value_and_levers() -> None:
    cat = catalog([("p", "propensity_only", 0.5), ("full", "full", 0.5)])
    cid = first_in(cat, "p")
    d = decide(person(cid), req(cid, limit=3), cat, Scorer(0.3), NOW)
    assert d.policy == "propensity_only"
    assert all(o.priority == pytest.approx(0.3, abs=1e-3) for o in d.offers)


def test_model_arm_scores_with_its_own_model_version() -> None:
    cat = catalog([("m2", "model:v2", 0.5), ("full", "full", 0.5)])
    cid, other = first_in(cat, "m2"), first_in(cat, "full")
    v2 = Scorer(0.9)
    v2.version = "v2"
    a = decide(person(cid), req(cid), cat, Scorer(0.1), NOW, scorers={"v2": v2})
    b = decide(person(other), req(other), cat, Scorer(0.1), NOW, scorers={"v2": v2})
    assert a.model_version == "v2" and a.offers[0].propensity == pytest.approx(0.9)
    assert b.model_version == "fixed" and b.offers[0].propensity == pytest.approx(0.1)


def test_frozen_arm_decides_with_the_base_propensity_and_records_nothing_to_learn() -> None:
    from models.learning.adaptive import AdaptiveModels

    cat = catalog([("frz", "frozen", 0.5), ("full", "full", 0.5)],
                  learning={"offers": "all", "predictors": ["attr.age"]})  # fmt: skip
    learner = AdaptiveModels(seed=3)
    frozen, full = first_in(cat, "frz"), first_in(cat, "full")
    a = decide(person(frozen), req(frozen), cat, Scorer(0.2), NOW, learner=learner)
    b = decide(person(full), req(full), cat, Scorer(0.2), NOW, learner=learner)
    assert a.policy == "frozen" and a.predictors is None
    assert a.offers[0].propensity == pytest.approx(0.2) and a.offers[0].probability == 1.0
    assert b.predictors  # the full arm's Thompson draw is learned from
