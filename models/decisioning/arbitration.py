"""The decision cascade: from a profile, a request and a catalogue to a decision.

:func:`decide_many` runs, per request:

1. candidates: offer × treatment on the requested channel(s) and placement,
   offers active by their dates;
2. eligibility, applicability and suitability rules (first excluding rule wins);
3. contact policies (caps and suppression);

then ONE ``scorer.predict`` over the surviving candidates of all requests
(``scorer.features`` once per request, as it takes one profile), and per
request:

4. priority = P × C × V × L, net value = priority − channel cost;
5. greedy selection by net value: per offer its best channel/treatment, at
   most one offer per group, contact caps counting this decision's own picks,
   ``limit`` offers, none whose net value is under ``arbitration.min_priority``
   ("no action" when nothing is left).

With adaptive models (the catalogue's ``learning`` section and a
:class:`~models.learning.adaptive.AdaptiveModels` passed as ``learner``), the
propensity of an adaptive offer is a Thompson draw from its posterior, whose
prior is the scorer's propensity; every chosen offer (and a "no action")
carries the probability with which the policy chose it, estimated from the
same draws repeated (:func:`~models.learning.adaptive.choice_probabilities`).

Each decision is a :class:`~models.decisioning.record.DecisionRecord`. The
cascade does not record impressions; the caller does (see the catalogue's
``arbitration.impressions``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from models.customer.profile import Profile
from models.decisioning.catalog import CandidateSpec, Catalog
from models.decisioning.experiments import MODEL_PREFIX, Assignment
from models.decisioning.facts import Candidate
from models.decisioning.policies import ContactLedger
from models.decisioning.record import ChosenOffer, DecisionRecord
from models.decisioning.request import DecideRequest
from models.errors import ModelError
from models.learning.adaptive import (
    BASELINE_PROPENSITY,
    NO_MESSAGE,
    AdaptiveModels,
    LearningConfig,
    choice_probabilities,
    model_key,
)


class PropensityScorer(Protocol):
    """What the cascade needs of a propensity model (see ``models/learning/scoring.py``)."""

    version: str

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


# -- the cascade ----------------------------------------------------------------------


class _Screen:
    """One request after the rule cascade: survivors waiting for propensities."""

    __slots__ = ("context", "ledger", "profile", "removed", "request", "survivors", "to_score")

    def __init__(
        self, profile: Profile, request: DecideRequest, context: dict, ledger: ContactLedger
    ) -> None:
        self.profile = profile
        self.request = request
        self.context = context  # as the model sees it; rules see context.channel per channel
        self.ledger = ledger
        self.survivors: list[tuple[CandidateSpec, dict]] = []
        self.to_score: list[CandidateSpec] = []  # survivors without a fixed propensity
        self.removed: list[dict] | None = [] if request.explain else None


def decide(
    profile: Profile,
    request: DecideRequest,
    catalog: Catalog,
    scorer: PropensityScorer,
    now: float,
    session_gap_s: float = 1800.0,
    learner: AdaptiveModels | None = None,
    scorers: Mapping[str, PropensityScorer] | None = None,
) -> DecisionRecord:
    """Decide for one customer (see the module docstring for the cascade)."""
    return decide_many([(profile, request)], catalog, scorer, now, session_gap_s, learner, scorers)[
        0
    ]


def decide_many(
    items: Sequence[tuple[Profile, DecideRequest]],
    catalog: Catalog,
    scorer: PropensityScorer,
    now: float,
    session_gap_s: float = 1800.0,
    learner: AdaptiveModels | None = None,
    scorers: Mapping[str, PropensityScorer] | None = None,
) -> list[DecisionRecord]:
    """Decide for many requests with one model run over all their candidates.

    With experiments in the catalogue each request runs under its arm's policy
    variant (:mod:`models.decisioning.experiments`); ``scorers`` holds the
    model versions of ``model:<version>`` arms (an arm whose version is
    missing scores with ``scorer``, and its record says which model scored).
    """
    if not catalog.experiments:
        return _decide_group(items, [None] * len(items), catalog, scorer, now,
                             session_gap_s, learner)  # fmt: skip
    arms = [catalog.experiments.assign(r.customer_id, r.channels[0]) for _, r in items]
    groups: dict[str, list[int]] = {}  # model version ("" = the shard's) -> item indexes
    for i, arm in enumerate(arms):
        version = _arm_model(arm)
        groups.setdefault(version if scorers and version in scorers else "", []).append(i)
    if len(groups) == 1:
        (version,) = groups
        sc = scorers[version] if version else scorer  # type: ignore[index]
        return _decide_group(items, arms, catalog, sc, now, session_gap_s, learner)
    out: list[DecisionRecord] = [None] * len(items)  # type: ignore[list-item]
    for version, idx in groups.items():
        sc = scorers[version] if version else scorer  # type: ignore[index]
        part = _decide_group([items[i] for i in idx], [arms[i] for i in idx], catalog, sc,
                             now, session_gap_s, learner)  # fmt: skip
        for i, record in zip(idx, part):
            out[i] = record
    return out


def _arm_model(arm: Assignment | None) -> str:
    if arm is None or not arm.policy.startswith(MODEL_PREFIX):
        return ""
    return arm.policy[len(MODEL_PREFIX) :]


def _decide_group(
    items: Sequence[tuple[Profile, DecideRequest]],
    arms: Sequence[Assignment | None],
    catalog: Catalog,
    scorer: PropensityScorer,
    now: float,
    session_gap_s: float,
    learner: AdaptiveModels | None,
) -> list[DecisionRecord]:
    """Requests that share one scorer: one model run."""
    screens = [_screen(p, r, catalog, now, session_gap_s) for p, r in items]
    blocks: list[np.ndarray] = []
    for s in screens:
        if s.to_score:
            X = scorer.features(s.profile, s.context, s.to_score, now)
            if len(X) != len(s.to_score):
                raise ModelError(
                    f"features returned {len(X)} rows for {len(s.to_score)} candidates"
                )
            blocks.append(X)
    props: list[float] = []
    if blocks:
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        P = np.asarray(scorer.predict(X), dtype=np.float64).reshape(-1)
        if len(P) != len(X):
            raise ModelError(f"the model returned {len(P)} propensities for {len(X)} rows")
        # NaN -> 0, then into [0, 1] (fmax/fmin skip NaN; np.nan_to_num + np.clip did
        # the same at ~20 µs of Python per call, two ufuncs take ~2 µs).
        props = np.fmin(np.fmax(P, 0.0), 1.0).tolist()
    version = str(getattr(scorer, "version", ""))
    out, start = [], 0
    for s, arm in zip(screens, arms):
        n = len(s.to_score)
        out.append(_arbitrate(s, props[start : start + n], catalog, version, now, learner, arm))
        start += n
    return out


def request_context(req: DecideRequest, now: float, gap_s: float) -> dict[str, Any]:
    """The context facts (``context.*``) of a request, as rules and models read them.

    Training from the interaction history rebuilds it the same way.
    """
    t = time.gmtime(now)
    base = dict(req.context)
    base.setdefault("device", None)
    base.setdefault("hour", t.tm_hour)  # a request may pass the customer's local time
    base.setdefault("weekday", t.tm_wday)
    base["channel"] = req.channels[0]
    base["channels"] = req.channels
    base["placement"] = req.placement
    base["_session_gap_s"] = gap_s
    return base


def _screen(
    profile: Profile, req: DecideRequest, catalog: Catalog, now: float, gap_s: float
) -> _Screen:
    base = request_context(req, now, gap_s)
    ledger = ContactLedger(catalog.contact_policies, profile, now, catalog.offer_info)
    s = _Screen(profile, req, base, ledger)
    survivors, to_score, removed = s.survivors, s.to_score, s.removed
    n_rules = len(catalog.rules)
    for ch in req.channels:
        # Rules see the candidate's channel as context.channel.
        ctx = base if ch == base["channel"] else {**base, "channel": ch}
        memo: list = [None] * n_rules  # rules reading no offer.* fact: once per channel
        for cand in catalog.candidates(ch, req.placement):
            if not cand.start <= now < cand.end:
                if removed is not None:
                    removed.append(
                        _removed(cand, "candidates", "active_dates", _dates(catalog, cand))
                    )
                continue
            hit = None
            for slot, excludes, rule in cand.checks:
                if slot < 0:
                    if excludes(profile, ctx, cand, now):
                        hit = rule
                        break
                    continue
                excluded = memo[slot]
                if excluded is None:
                    excluded = memo[slot] = bool(excludes(profile, ctx, cand, now))
                if excluded:
                    hit = rule
                    break
            if hit is not None:
                if removed is not None:
                    removed.append(_removed(cand, hit.stage, hit.id, hit.reason))
                continue
            if cand.contact_policies:
                policy = ledger.blocking(cand)
                if policy is not None:
                    if removed is not None:
                        removed.append(_removed(cand, "contact", policy.id, policy.reason))
                    continue
            survivors.append((cand, ctx))
            if cand.propensity is None:
                to_score.append(cand)
    return s


def _arbitrate(
    s: _Screen,
    props: list[float],
    catalog: Catalog,
    model_version: str,
    now: float,
    learner: AdaptiveModels | None = None,
    arm: Assignment | None = None,
) -> DecisionRecord:
    req, profile = s.request, s.profile
    variant = arm.policy if arm is not None else "full"
    rows = []  # (net, priority, p, c, cand, column)
    it = iter(props)
    adaptive = None
    if learner is not None and catalog.learning is not None and variant != "frozen":
        adaptive = _Adaptive(learner, catalog.learning)
    for cand, ctx in s.survivors:
        p = cand.propensity if cand.propensity is not None else next(it)
        c = cand.static_weight
        for test, weight in cand.weights:
            if test(profile, ctx, cand, now):
                c *= weight
        if adaptive is not None and cand.offer_id in adaptive.learning.predictors:
            adaptive.add(len(rows), cand, p, profile, ctx, now)
        rows.append([0.0, 0.0, p, c, cand, len(rows)])
    draws = None
    uplift_of: dict[int, float] = {}  # column -> P(no message) to subtract (incremental ranking)
    if adaptive is not None and adaptive.learning.ranking == "incremental":
        adaptive.add_baseline(profile, s.context, now)
    if adaptive is not None and (adaptive.columns or adaptive.none_key):
        draws = adaptive.draw()
        for k, col in enumerate(adaptive.columns):
            rows[col][2] = float(draws[0, k])
            if adaptive.none_key:
                uplift_of[col] = float(draws[0, -1])
    plain = variant == "propensity_only"  # P × C: no value, levers or cost
    for row in rows:
        p, c, cand = row[2], row[3], row[4]
        if plain:
            row[0] = row[1] = (p - uplift_of.get(row[5], 0.0)) * c
            continue
        priority = (p - uplift_of.get(row[5], 0.0)) * c * cand.value * cand.levers
        row[0], row[1] = priority - cand.cost, priority
    probs, p_none = None, 1.0
    if adaptive is not None and draws is not None and rows and variant not in _FIXED:
        probs, p_none = _choice_probabilities(rows, adaptive, draws, catalog, req.limit, plain)
    rows.sort(key=_by_net)  # stable: ties keep channel order, then catalogue order
    explain = req.explain
    min_priority = catalog.arbitration.min_priority
    chosen: list[tuple] = []
    offers_taken: dict[str, str] = {}  # offer id -> channel
    groups_taken: dict[str, str] = {}  # group -> offer id
    notes: list[tuple[str, str] | None] = []
    picks: dict[int, float] | None = None
    if variant == "random":
        picks = _uniform_picks(rows, req.limit)
        probs = picks
        p_none = 0.0 if rows else 1.0
    elif variant == "no_message":
        p_none = 1.0
    for row in rows:
        if not explain and len(chosen) >= req.limit:
            break
        net, cand = row[0], row[4]
        note = None
        if variant in _FIXED:
            if picks is None or row[5] not in picks:
                if not explain:
                    continue
                note = (variant, f"the {arm.arm if arm else ''} arm's {variant} policy")
        elif net < min_priority:
            note = ("min_priority", f"net value {net:.4g} is under the threshold {min_priority:g}")
        elif cand.offer_id in offers_taken:
            note = ("one_per_offer", f"{cand.offer_id} is chosen on {offers_taken[cand.offer_id]}, "
                    "which has a higher net value")  # fmt: skip
        elif cand.group in groups_taken:
            note = ("one_per_group", f"group {cand.group} is taken by {groups_taken[cand.group]}")
        elif len(chosen) >= req.limit:
            note = ("limit", f"the request asked for {req.limit} offer(s)")
        elif chosen and cand.contact_policies:
            policy = s.ledger.blocking(cand)
            if policy is not None:
                note = (policy.id, f"{policy.reason} (counting this decision's offers)")
        if note is None:
            chosen.append(row)
            offers_taken[cand.offer_id] = cand.channel
            groups_taken[cand.group] = cand.offer_id
            if req.limit > 1:
                s.ledger.add(cand)
        elif not explain and (note[0] in ("min_priority", "limit")):
            break
        if explain:
            notes.append(note)
    offers = [
        ChosenOffer(
            offer_id=c.offer_id, group=c.group, channel=c.channel, treatment=c.treatment_id,
            placement=c.placement, content=c.content, propensity=round(p, 6),
            priority=round(pr, 4), value=c.value,
            probability=1.0 if probs is None else round(float(probs[col]), 6),
        )
        for _, pr, p, _, c, col in chosen
    ]  # fmt: skip
    logged = [
        {"offer_id": c.offer_id, "channel": c.channel, "treatment": c.treatment_id,
         "propensity": round(p, 6), "priority": round(pr, 4), "value": c.value, "cost": c.cost}
        for _, pr, p, _, c, _ in rows
    ]  # fmt: skip
    predictors = None
    if adaptive is not None:
        picked = {row[5] for row in chosen}
        predictors = {
            model_key(cand.offer_id, cand.channel): bins
            for _, cand, bins in adaptive.chosen_bins(picked)
        }
        if adaptive.none_key and not chosen:  # the no-message model learns from this one
            predictors[adaptive.none_key] = adaptive.none_bins
        predictors = predictors or None
    trace = None
    if explain:
        trace = list(s.removed or ())
        seen = {} if adaptive is None else adaptive.explained(draws)
        trace.extend(
            _scored(row, rank, note, seen.get(row[5]))
            for rank, (row, note) in enumerate(zip(rows, notes), 1)
        )
    return DecisionRecord(
        decision_id=DecisionRecord.new_id(),
        customer_id=req.customer_id,
        ts=now,
        channels=list(req.channels),
        catalog_version=catalog.version,
        model_version=model_version,
        offers=offers,
        candidates=logged,
        trace=trace,
        probability=1.0 if chosen else round(p_none, 6),
        predictors=predictors,
        experiment=arm.experiment if arm is not None else None,
        arm=arm.arm if arm is not None else None,
        policy=variant,
    )


_TINY = np.float32(1e-30)
_FIXED = ("random", "no_message")  # policies that do not pick by net value
_RNG = np.random.default_rng()


def _uniform_picks(rows: list[list], limit: int) -> dict[int, float]:
    """The random policy: ``limit`` distinct offers uniformly, then one of each offer's
    channel/treatment rows uniformly. Column -> the probability it was chosen with.
    """
    by_offer: dict[str, list[int]] = {}
    for row in rows:
        by_offer.setdefault(row[4].offer_id, []).append(row[5])
    offers = list(by_offer)
    k = min(limit, len(offers))
    if k == 0:
        return {}
    out: dict[int, float] = {}
    for j in _RNG.choice(len(offers), size=k, replace=False):
        cols = by_offer[offers[int(j)]]
        col = cols[int(_RNG.integers(len(cols)))]
        out[col] = k / len(offers) / len(cols)
    return out


class _Adaptive:
    """The adaptive candidates of one decision: their posteriors and predictor bins."""

    __slots__ = ("a", "b", "bins", "cands", "columns", "learned", "learner", "learning", "memo",
                 "none", "none_bins", "none_key", "priors")  # fmt: skip

    def __init__(self, learner: AdaptiveModels, learning: LearningConfig) -> None:
        self.learner = learner
        self.learning = learning
        self.columns: list[int] = []  # row index of each adaptive candidate
        self.cands: list[CandidateSpec] = []
        self.bins: list[tuple[str, ...]] = []
        self.a: list[float] = []
        self.b: list[float] = []
        self.priors: list[float] = []
        self.learned: list[float] = []
        # (predictor, channel) -> bin; (id of a predictor list, channel) -> its bins
        self.memo: dict[tuple[Any, str], Any] = {}
        self.none_key = ""  # the no-message model (incremental ranking), drawn last
        self.none_bins: list[str] = []
        self.none: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0)  # a, b, prior, learned

    def add_baseline(self, profile: Profile, ctx: dict, now: float) -> None:
        """The no-message model of the request's first channel: P(outcome | no message)."""
        learner, learning = self.learner, self.learning
        self.none_bins = [pr.bin(pr.getter(profile, ctx, None, now)) for pr in learning.baseline]
        self.none_key = model_key(NO_MESSAGE, ctx["channel"])
        prior = learning.starting_propensity or BASELINE_PROPENSITY
        a, b, learned = learner.posterior(
            self.none_key, learning.baseline_names, tuple(self.none_bins), prior
        )
        self.none = (a, b, prior, learned)

    def add(
        self,
        column: int,
        cand: CandidateSpec,
        p: float,
        profile: Profile,
        ctx: dict,
        now: float,
    ) -> None:
        learning = self.learning
        preds = learning.predictors[cand.offer_id]
        memo = self.memo
        # Offers usually share one predictor list reading only the customer and the
        # request: its bins are computed once per decision and channel.
        shared = (id(preds), ctx["channel"])
        bins = memo.get(shared)
        if bins is None:
            out = []
            per_candidate = False
            for pr in preds:
                if pr.per_candidate:
                    per_candidate = True
                    out.append(pr.bin(pr.getter(profile, ctx, cand, now)))
                    continue
                key = (pr.name, ctx["channel"])
                b = memo.get(key)
                if b is None:
                    b = memo[key] = pr.bin(pr.getter(profile, ctx, cand, now))
                out.append(b)
            bins = tuple(out)
            if not per_candidate:
                memo[shared] = bins
        prior = learning.starting_propensity if learning.starting_propensity is not None else p
        a, b, learned = self.learner.posterior(
            model_key(cand.offer_id, cand.channel), learning.names[cand.offer_id], bins, prior
        )
        self.columns.append(column)
        self.cands.append(cand)
        self.bins.append(bins)
        self.a.append(a)
        self.b.append(b)
        self.priors.append(prior)
        self.learned.append(learned)

    def draw(self) -> np.ndarray:
        """``[M + 1, k]`` propensities (+ the no-message one last); row 0 is the one used."""
        a, b = self.a, self.b
        if self.none_key:
            a, b = [*a, self.none[0]], [*b, self.none[1]]
        learning, rng = self.learning, self.learner.rng
        if learning.exploration == "greedy":
            mean = np.asarray(a) / (np.asarray(a) + np.asarray(b))
            return mean.reshape(1, -1)
        # Beta(a, b) = X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b): numpy's gamma
        # sampler is ~2.5× faster than its beta sampler for these shapes, one
        # call for X and Y together saves a call's overhead, and float32 (ample
        # for a propensity) is a further ~15 % faster.
        k = len(a)
        shapes = np.array(a + b, dtype=np.float32)
        xy = rng.standard_gamma(shapes, size=(learning.draws + 1, 2 * k), dtype=np.float32)
        x = xy[:, :k]
        # In float32 (7 digits: ample for a propensity). The tiny term keeps a draw
        # whose two gamma variates both underflow (shapes far below 1) at 0, not NaN.
        return x / (x + xy[:, k:] + _TINY)

    def chosen_bins(self, picked: set[int]) -> list[tuple[int, CandidateSpec, list[str]]]:
        return [(col, c, list(bins)) for col, c, bins in zip(self.columns, self.cands, self.bins)
                if col in picked]  # fmt: skip

    def explained(self, draws: np.ndarray | None) -> dict[int, dict]:
        out = {
            col: {"prior": round(pr, 6), "learned": round(le, 6), "posterior_mean":
                  round(a / (a + b), 6), "evidence": round(a + b, 2)}
            for col, pr, le, a, b in zip(self.columns, self.priors, self.learned, self.a, self.b)
        }  # fmt: skip
        if self.none_key and draws is not None:
            _, _, prior, learned = self.none
            baseline = {
                "model": self.none_key, "prior": round(prior, 6), "learned": round(learned, 6),
                "sampled": round(float(draws[0, -1]), 6),
            }  # fmt: skip
            for row in out.values():
                row["no_message"] = baseline
        return out


def _choice_probabilities(
    rows: list[list],
    adaptive: _Adaptive,
    draws: np.ndarray,
    catalog: Catalog,
    limit: int,
    plain: bool = False,
) -> tuple[np.ndarray | None, float]:
    """Per column, the probability the policy picks it; and of no action."""
    if draws.shape[0] == 1:  # greedy: deterministic
        return None, 1.0
    cols = adaptive.columns
    k = len(cols)
    if plain:  # propensity only: no value, levers or cost
        scale = np.array([rows[col][3] for col in cols])
        cost: np.ndarray | float = 0.0
    else:
        scale, cost = np.array(
            [(rows[col][3] * rows[col][4].value * rows[col][4].levers, rows[col][4].cost)
             for col in cols]
        ).T  # fmt: skip
    sampled = draws[:, :k] - draws[:, -1:] if adaptive.none_key else draws[:, :k]
    if k == len(rows):  # every candidate adaptive (columns are added in row order)
        net = sampled * scale - cost
    else:
        net = np.empty((draws.shape[0], len(rows)))
        for row in rows:  # fixed candidates: the same value in every draw
            net[:, row[5]] = row[0]
        net[:, cols] = sampled * scale - cost
    if limit == 1:  # offers and groups only matter when several offers are picked
        return choice_probabilities(net, (), (), catalog.arbitration.min_priority, 1)
    cands = [row[4] for row in rows]
    return choice_probabilities(
        net, [c.offer_id for c in cands], [c.group for c in cands],
        catalog.arbitration.min_priority, limit,
    )  # fmt: skip


def _by_net(row: tuple) -> float:
    return -row[0]


def _removed(cand: CandidateSpec, stage: str, rule: str, reason: str) -> dict:
    return {
        "offer_id": cand.offer_id, "channel": cand.channel, "treatment": cand.treatment_id,
        "placement": cand.placement, "stage": stage, "rule": rule, "reason": reason,
        "chosen": False,
    }  # fmt: skip


def _scored(row: list, rank: int, note: tuple[str, str] | None, learned: dict | None) -> dict:
    net, priority, p, c, cand, _ = row
    out = {
        "offer_id": cand.offer_id, "channel": cand.channel, "treatment": cand.treatment_id,
        "placement": cand.placement, "stage": "arbitration", "p": round(p, 6), "c": round(c, 4),
        "v": cand.value, "l": cand.levers, "priority": round(priority, 4),
        "net_value": round(net, 4), "rank": rank, "chosen": note is None,
    }  # fmt: skip
    if learned is not None:
        out.update(learned, sampled=round(p, 6))
    if note is not None:
        out["rule"], out["reason"] = note
    return out


def _dates(catalog: Catalog, cand: CandidateSpec) -> str:
    dates = catalog.offers[cand.offer_id].dates
    return f"offer runs from {dates.get('start', 'always')} to {dates.get('end', 'open end')}"
