"""Adaptive models (models/learning/adaptive.py) and adaptive arbitration, without Ray."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from models.customer.profile import Profile
from models.decisioning.arbitration import decide
from models.decisioning.catalog import load_catalog
from models.decisioning.request import parse_decide_request
from models.errors import CatalogError
from models.learning.adaptive import (
    MISSING,
    AdaptiveModels,
    Evidence,
    Predictor,
    choice_probabilities,
)
from models.learning.scoring import PriorScorer

NOW = 1_748_865_600.0
SEGMENTS = ("young", "family", "senior")
# True acceptance rates per segment; each offer is best for one segment.
TRUTH = {
    "card": {"young": 0.30, "family": 0.05, "senior": 0.02},
    "loan": {"young": 0.04, "family": 0.25, "senior": 0.03},
    "pension": {"young": 0.01, "family": 0.04, "senior": 0.35},
}


def catalog_doc(**learning: Any) -> dict:
    return {
        "version": "adaptive-test",
        "channels": {"web": {"kind": "inbound", "cost": 0.0}},
        "offers": [
            {
                "id": oid,
                "name": oid,
                "group": oid,
                "value": 10,
                "treatments": [{"id": f"{oid}_web", "channel": "web"}],
            }
            for oid in TRUTH
        ],
        "learning": {"offers": "all", "predictors": ["attr.segment"], **learning},
    }


def request(limit: int = 1, explain: bool = False) -> Any:
    return parse_decide_request(
        {"customer_id": "c1", "channel": "web", "limit": limit, "explain": explain}
    )


def test_catalogue_refuses_a_predictor_the_server_cannot_compute() -> None:
    doc = catalog_doc(predictors=["attr.segment", "mood.today"])
    with pytest.raises(CatalogError) as err:
        load_catalog(doc)
    assert "card" in err.value.message and "mood.today" in err.value.message
    assert "offers[card]" in (err.value.field or "")


def test_catalogue_with_learning_round_trips() -> None:
    doc = catalog_doc(prior_weight=5)
    doc["offers"][0]["adaptive"] = {"predictors": [{"fact": "attr.age", "bins": [30, 60]}]}
    cat = load_catalog(doc)
    again = load_catalog(cat.to_dict())
    assert again.learning is not None and again.learning.prior_weight == 5
    assert [p.name for p in again.learning.predictors["card"]] == ["attr.age"]
    assert [p.name for p in again.learning.predictors["loan"]] == ["attr.segment"]


def test_missing_predictor_is_its_own_bin_never_a_crash() -> None:
    pred = Predictor.from_spec({"fact": "attr.age", "bins": [30, 60]}, "p")
    assert pred.bin(None) == MISSING and pred.bin(float("nan")) == MISSING
    assert pred.bin(25) == "<30" and pred.bin(45) == ">=30" and pred.bin(70) == ">=60"
    cat = load_catalog(catalog_doc())
    models = AdaptiveModels(seed=1)
    record = decide(Profile("c1"), request(), cat, PriorScorer(default=0.1), NOW, learner=models)
    chosen = record.offers[0]
    assert record.predictors == {f"{chosen.offer_id}@web": [MISSING]}


def _stream(n: int, seed: int) -> list[tuple[str, str, bool]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seg = SEGMENTS[rng.integers(3)]
        offer = list(TRUTH)[rng.integers(3)]
        out.append((offer, seg, bool(rng.random() < TRUTH[offer][seg])))
    return out


def test_learned_estimates_approach_the_true_rates() -> None:
    models = AdaptiveModels(seed=2)
    for offer, seg, y in _stream(9000, seed=3):
        models.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    for offer, rates in TRUTH.items():
        for seg, truth in rates.items():
            a, b, learned = models.posterior(f"{offer}@web", ["attr.segment"], [seg], 0.5)
            # ~1000 responses per (offer, segment): 3 standard errors
            assert abs(learned - truth) < 3 * math.sqrt(truth * (1 - truth) / 1000) + 0.01
            assert abs(a / (a + b) - learned) < 0.01  # the prior (0.5, weight 20) has faded


def test_one_shard_and_four_shards_learn_the_same_merged_model() -> None:
    stream = _stream(4000, seed=4)
    one = AdaptiveModels()
    for offer, seg, y in stream:
        one.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    shards = [AdaptiveModels() for _ in range(4)]
    for i, (offer, seg, y) in enumerate(stream):
        shards[hash((offer, seg, i)) % 4].learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    for i, shard in enumerate(shards):
        shard.merge_others([s.export() for j, s in enumerate(shards) if j != i])
    for shard in shards:
        for key in one.merged:
            # Counts add exactly, so every estimate is identical (float tolerance)...
            assert shard.merged[key].n == one.merged[key].n
            assert shard.merged[key].bins == one.merged[key].bins
            for seg in SEGMENTS:
                p1 = one.posterior(key, ["attr.segment"], [seg], 0.1)
                p4 = shard.posterior(key, ["attr.segment"], [seg], 0.1)
                assert p1 == pytest.approx(p4, rel=1e-12)
            # ...while the prequential AUC saw different "before" estimates per shard.
            assert abs(shard.summary(key)["auc"] - one.summary(key)["auc"]) < 0.1
        # A repeated merge round counts nothing twice.
        shard.merge_others([s.export() for s in shards if s is not shard])
        assert shard.merged["card@web"].n == one.merged["card@web"].n


def test_evidence_round_trips_and_merges_order_free() -> None:
    parts = [Evidence() for _ in range(3)]
    for i, (_offer, seg, y) in enumerate(_stream(600, seed=5)):
        parts[i % 3].learn_one(["attr.segment"], [seg], y)
    ab, ba = Evidence(), Evidence()
    for p in parts:
        ab.merge(Evidence.from_builtins(p.to_builtins()))
    for p in reversed(parts):
        ba.merge(p)
    assert ab.to_builtins() == ba.to_builtins()


def test_frozen_model_does_not_learn_and_reset_returns_to_the_prior() -> None:
    models = AdaptiveModels()
    models.freeze("card@web", True)
    assert not models.learn_one("card@web", [], [], True)
    models.freeze("card@web", False)
    assert models.learn_one("card@web", [], [], True)
    models.reset("card@web")
    assert models.posterior("card@web", [], [], 0.2) == pytest.approx((4.0, 16.0, 0.2))


def test_online_auc_tells_a_predictive_model_from_noise() -> None:
    models = AdaptiveModels()
    for offer, seg, y in _stream(6000, seed=6):
        models.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    assert models.summary("pension@web")["auc"] > 0.75
    top = models.summary("pension@web")["top_predictors"]
    assert top[0]["predictor"] == "attr.segment" and top[0]["strength"] > 0.3


def test_logged_choice_probabilities_match_empirical_frequencies() -> None:
    """Each logged probability is a mean of M+1 draws: its error is ≤ 0.5/√(M+1)."""
    draws = 200
    cat = load_catalog(catalog_doc(draws=draws))
    models = AdaptiveModels(seed=7)
    for offer, seg, y in _stream(300, seed=8):  # immature: choices stay uncertain
        models.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    profile = Profile("c1", attrs={"segment": "family"})
    n = 3000
    counts: dict[str, int] = {}
    logged: dict[str, list[float]] = {}
    for _ in range(n):
        rec = decide(profile, request(), cat, PriorScorer(default=0.1), NOW, learner=models)
        o = rec.offers[0]
        counts[o.offer_id] = counts.get(o.offer_id, 0) + 1
        logged.setdefault(o.offer_id, []).append(o.probability)
    assert len(counts) >= 2  # the test means something only if the policy explores
    for offer, k in counts.items():
        freq = k / n
        mean_logged = float(np.mean(logged[offer]))
        # 4 standard errors of the empirical frequency; MC noise averages out over n.
        bound = 4 * math.sqrt(freq * (1 - freq) / n) + 4 * 0.5 / math.sqrt(draws * n)
        assert abs(mean_logged - freq) < bound + 0.005, (offer, freq, mean_logged)
        assert all(0 < p <= 1 for p in logged[offer])


def test_choice_probabilities_of_a_sure_winner_and_of_no_action() -> None:
    net = np.array([[5.0, 1.0, -1.0]] * 100)
    probs, none = choice_probabilities(net, ["a", "b", "c"], ["g", "h", "i"], 0.0, 1)
    assert probs.tolist() == [1.0, 0.0, 0.0] and none == 0.0
    probs, none = choice_probabilities(net - 10, ["a", "b", "c"], ["g", "h", "i"], 0.0, 1)
    assert none == 1.0 and probs.sum() == 0.0
    probs, none = choice_probabilities(net, ["a", "b", "c"], ["g", "g", "i"], 0.0, 2)
    assert probs.tolist() == [1.0, 0.0, 0.0]  # b shares a's group; c is under the threshold


def test_explain_shows_prior_learned_and_sampled_propensity() -> None:
    cat = load_catalog(catalog_doc(starting_propensity=0.2))
    models = AdaptiveModels(seed=9)
    for _ in range(50):
        models.learn_one("card@web", ["attr.segment"], ["young"], True)
    rec = decide(
        Profile("c1", attrs={"segment": "young"}), request(explain=True), cat,
        PriorScorer(default=0.1), NOW, learner=models,
    )  # fmt: skip
    rows = {r["offer_id"]: r for r in rec.trace if r["stage"] == "arbitration"}
    assert rows["card"]["prior"] == 0.2 and rows["card"]["learned"] > 0.9
    assert rows["loan"]["learned"] == 0.2  # no evidence: the starting propensity
    assert all(0 <= r["sampled"] <= 1 and r["p"] == r["sampled"] for r in rows.values())
    assert rec.offers[0].offer_id == "card"


def test_greedy_exploration_is_deterministic_with_probability_one() -> None:
    cat = load_catalog(catalog_doc(exploration="greedy"))
    rec = decide(
        Profile("c1"), request(), cat, PriorScorer(default=0.1), NOW, learner=AdaptiveModels()
    )
    assert rec.offers[0].probability == 1.0


def uplift_catalog() -> Any:
    doc = catalog_doc(ranking="incremental", starting_propensity=0.1, prior_weight=10)
    return load_catalog(doc)


def test_incremental_ranking_sends_nothing_when_no_offer_adds_to_the_baseline() -> None:
    cat = uplift_catalog()
    models = AdaptiveModels(seed=11)
    # Seniors buy on their own (40 %) more often than after any message (20 %).
    for i in range(500):
        for key in ("card@web", "loan@web", "pension@web"):
            models.learn_one(key, ["attr.segment"], ["senior"], i % 5 == 0)
        models.learn_one("none@web", ["attr.segment"], ["senior"], i % 5 < 2)
    senior = Profile("c1", attrs={"segment": "senior"})
    records = [
        decide(senior, request(), cat, PriorScorer(), NOW, learner=models) for _ in range(200)
    ]
    empty = [r for r in records if not r.offers]
    assert len(empty) >= 198  # the uplift is −0.2 ± 0.03: a message almost never pays
    assert all(r.predictors and "none@web" in r.predictors for r in empty)
    assert all(0 < r.probability <= 1 for r in empty)
    # The young respond to the card 30 points above their baseline: it is sent.
    for _ in range(300):
        models.learn_one("card@web", ["attr.segment"], ["young"], True)
        models.learn_one("none@web", ["attr.segment"], ["young"], False)
    young = Profile("c2", attrs={"segment": "young"})
    rec = decide(young, request(explain=True), cat, PriorScorer(), NOW, learner=models)
    assert rec.offers[0].offer_id == "card"
    row = next(t for t in rec.trace if t.get("offer_id") == "card" and t["stage"] == "arbitration")
    assert row["no_message"]["model"] == "none@web" and row["no_message"]["learned"] < 0.1


def test_incremental_ranking_refuses_offer_facts_for_the_baseline() -> None:
    doc = catalog_doc(ranking="incremental", predictors=["offer.impressions.7d"])
    with pytest.raises(CatalogError) as err:
        load_catalog(doc)
    assert err.value.field == "learning.predictors[0]"


def test_a_decision_sees_a_response_as_soon_as_it_is_learned() -> None:
    """Estimates are memoised per (model, bins); every change of evidence empties the memo."""
    stream = _stream(600, seed=11)
    models, fresh = AdaptiveModels(), AdaptiveModels()
    for offer, seg, y in stream:
        models.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    before = models.posterior("card@web", ["attr.segment"], ("young",), 0.1)
    assert models.posterior("card@web", ["attr.segment"], ("young",), 0.1) == before  # memo
    models.learn_one("card@web", ["attr.segment"], ["young"], True)
    for offer, seg, y in [*stream, ("card", "young", True)]:
        fresh.learn_one(f"{offer}@web", ["attr.segment"], [seg], y)
    after = models.posterior("card@web", ["attr.segment"], ("young",), 0.1)
    assert after != before
    assert after == fresh.posterior("card@web", ["attr.segment"], ("young",), 0.1)
    other = AdaptiveModels()
    for _ in range(50):
        other.learn_one("card@web", ["attr.segment"], ["young"], False)
    models.merge_others([other.export()])  # another shard's evidence arrives
    merged = models.posterior("card@web", ["attr.segment"], ("young",), 0.1)
    assert merged[2] < after[2]
    models.reset("card@web")
    assert models.posterior("card@web", ["attr.segment"], ("young",), 0.1) == pytest.approx(
        (2.0, 18.0, 0.1)
    )


def test_thompson_draws_stay_finite_with_a_vanishing_prior() -> None:
    """Shapes far below 1 make both float32 gamma variates underflow at times: never NaN."""
    cat = load_catalog(catalog_doc(prior_weight=1e-6, starting_propensity=1e-6))
    models = AdaptiveModels(cat.learning.prior_weight, seed=12)  # type: ignore[union-attr]
    profile = Profile("c1", attrs={"segment": "young"})
    for _ in range(300):
        rec = decide(profile, request(), cat, PriorScorer(default=0.1), NOW, learner=models)
        assert all(0.0 <= o.propensity <= 1.0 for o in rec.offers)
        assert 0.0 <= rec.probability <= 1.0
        assert all(0.0 < o.probability <= 1.0 for o in rec.offers)


def test_offers_sharing_the_default_predictors_bin_the_customer_once() -> None:
    doc = catalog_doc(predictors=["attr.segment", {"fact": "attr.age", "bins": [30, 60]}])
    doc["offers"][2]["adaptive"] = {"predictors": ["attr.age"]}  # pension: its own list
    cat = load_catalog(doc)
    learning = cat.learning
    assert learning is not None
    assert learning.predictors["card"] is learning.predictors["loan"]
    assert learning.names["pension"] == ("attr.age",)
    models = AdaptiveModels(seed=13)
    profile = Profile("c1", attrs={"segment": "family", "age": 41})
    seen = set()
    for _ in range(200):
        rec = decide(profile, request(limit=3), cat, PriorScorer(default=0.1), NOW, learner=models)
        for key, bins in (rec.predictors or {}).items():
            seen.add(key)
            assert bins == (["family", ">=30"] if key != "pension@web" else [">=30"])
    assert seen == {"card@web", "loan@web", "pension@web"}
