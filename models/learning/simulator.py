"""A synthetic bank's customers, whose true response propensities are known.

The simulator owns a small, seeded, deterministic world: customers in four
segments, their behaviour as ``/v1/events`` events, and offers shown to them
on the demo channels with an accept/reject outcome drawn from a *known*
ground truth. It exists to train the bundled demo model and to check that a
trained model recovers that truth.

Ground truth. For segment ``s``, offer ``o`` and channel ``c`` the base
acceptance probability is :func:`ground_truth_table` ``[s, o, c]``: a
segment × offer rate shifted (on the logit scale) by segment × channel and
offer × channel preferences. A customer's behaviour moves the logit further
(:data:`BEHAVIOUR_EFFECTS`): holding the product, a recent complaint, a recent
credit check, churn risk, fatigue from repeated impressions, a recent
rejection, an engaged visit, an abandoned application.
:func:`true_propensity` combines the two.

Training rows. Every simulated customer is a real :class:`~models.customer.profile.Profile`
built by applying its events in time order. At each decision the shown offer
is drawn uniformly (a random logging policy, so labels are unbiased) and the
row is built by :class:`~models.learning.features.FeatureBuilder` from the profile as it
was at that moment: the very code that serves the model. Rows are kept in a
:class:`TrainingSet` and can be written as JSONL or CSV:

* JSONL: line 1 is a header ``{"format": "rtim-training/1", "features": [...],
  "columns": [...], "source": {...}}``; each further line is one decision
  ``{"x": [floats, one per column], "label": 0|1, "customer_id", "offer_id",
  "channel", "segment", "ts", "p_true"}``.
* CSV: line 1 is ``#`` followed by the same JSON header; line 2 names the
  columns (the feature columns, then ``label, customer_id, offer_id, channel,
  segment, ts, p_true``); one decision per further line.

Run ``python -m models.learning.simulator --customers 2000 --out var/train.jsonl``.
Only numpy and the pure ``models`` modules are used.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from models.customer.events import parse_event
from models.customer.profile import Profile
from models.learning.features import FeatureBuilder

TRAINING_FORMAT = "rtim-training/1"
SESSION_GAP_S = 1800.0
START = datetime(2025, 1, 6, tzinfo=timezone.utc).timestamp()  # a Monday
DAY = 86400.0

SEGMENTS = ("young", "family", "affluent", "senior")
SEGMENT_SHARE = (0.30, 0.30, 0.15, 0.25)
OFFERS = (
    "credit_card",
    "personal_loan",
    "savings_account",
    "mortgage_review",
    "premium_account",
    "retention_offer",
    "service_message",
)
OFFER_GROUP = {
    "credit_card": "credit",
    "personal_loan": "credit",
    "savings_account": "savings",
    "mortgage_review": "mortgage",
    "premium_account": "upsell",
    "retention_offer": "retention",
    "service_message": "service",
}
# The product an accepted offer adds to the holdings (None: not a product).
OFFER_PRODUCT = {
    "credit_card": "credit_card",
    "personal_loan": "personal_loan",
    "savings_account": "savings_account",
    "mortgage_review": "mortgage",
    "premium_account": "premium_account",
    "retention_offer": None,
    "service_message": None,
}
PRODUCTS = ("credit_card", "personal_loan", "savings_account", "mortgage", "premium_account")
OFFER_VALUE = {
    "credit_card": 120.0,
    "personal_loan": 300.0,
    "savings_account": 80.0,
    "mortgage_review": 900.0,
    "premium_account": 200.0,
    "retention_offer": 150.0,
    "service_message": 1.0,
}
CHANNELS = ("web", "app", "email", "sms", "call_center", "outbound_call", "branch")
PLACEMENT = {
    "web": "home_hero",
    "app": "home_card",
    "email": "newsletter",
    "sms": "sms",
    "call_center": "agent_script",
    "outbound_call": "call_script",
    "branch": "advisor",
}

# -- ground truth ------------------------------------------------------------------

# Acceptance rate in % of each offer (columns in OFFERS order) by segment.
_SEGMENT_OFFER_PCT = {
    "young": (12.0, 8.0, 4.0, 1.5, 1.5, 6.0, 14.0),
    "family": (8.0, 9.0, 7.0, 10.0, 3.0, 6.0, 12.0),
    "affluent": (5.0, 2.0, 9.0, 5.0, 14.0, 4.0, 9.0),
    "senior": (2.0, 1.5, 12.0, 1.5, 5.0, 8.0, 16.0),
}
# Logit shift of each channel (columns in CHANNELS order) by segment.
_SEGMENT_CHANNEL = {
    "young": (0.3, 0.8, -0.5, 0.0, -0.3, -1.0, -0.8),
    "family": (0.2, 0.3, 0.0, -0.2, 0.0, -0.5, 0.0),
    "affluent": (0.0, 0.2, 0.2, -0.6, 0.2, 0.3, 0.6),
    "senior": (-0.5, -1.0, 0.0, -0.3, 0.5, 0.2, 0.9),
}
# Logit shift of an offer on a channel where it fits particularly well or badly.
_OFFER_CHANNEL = {
    ("credit_card", "web"): 0.3,
    ("credit_card", "outbound_call"): -0.5,
    ("mortgage_review", "branch"): 0.8,
    ("mortgage_review", "outbound_call"): 0.4,
    ("mortgage_review", "sms"): -0.8,
    ("premium_account", "call_center"): 0.4,
    ("service_message", "sms"): 0.6,
    ("service_message", "app"): 0.4,
    ("retention_offer", "call_center"): 0.6,
    ("retention_offer", "email"): -0.4,
}

BEHAVIOUR_EFFECTS: dict[str, Any] = {
    # logit shifts applied by true_propensity() on top of the table
    "holds_product": -3.0,  # the offer's product is already held
    "complaint_30d": {  # a complaint in the last 30 days
        "retention_offer": 1.5,
        "service_message": 1.0,
        "premium_account": -1.0,
        "credit_card": -0.7,
        "personal_loan": -0.7,
    },
    "credit_fail_30d": {"credit_card": -2.0, "personal_loan": -2.0, "mortgage_review": -1.0},
    "credit_pass_30d": {"credit_card": 0.5, "personal_loan": 1.0, "mortgage_review": 1.0},
    "churn_risk": {"retention_offer": 4.0},  # × (churn_risk - 0.25)
    "impression_30d": -0.4,  # per impression of the same offer in the last 30 days
    "rejected_7d": -1.0,  # the same offer was rejected in the last 7 days
    "engaged_visit": 0.4,  # web/app with 5+ pages viewed in this visit
    "abandoned_application_7d": 1.2,  # this offer's product was left in the cart
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _base_logits() -> np.ndarray:
    out = np.zeros((len(SEGMENTS), len(OFFERS), len(CHANNELS)))
    for s, seg in enumerate(SEGMENTS):
        for o, offer in enumerate(OFFERS):
            for c, ch in enumerate(CHANNELS):
                out[s, o, c] = (
                    _logit(_SEGMENT_OFFER_PCT[seg][o] / 100.0)
                    + _SEGMENT_CHANNEL[seg][c]
                    + _OFFER_CHANNEL.get((offer, ch), 0.0)
                )
    return out


_BASE_LOGITS = _base_logits()
_SEG_INDEX = {s: i for i, s in enumerate(SEGMENTS)}
_OFFER_INDEX = {o: i for i, o in enumerate(OFFERS)}
_CHANNEL_INDEX = {c: i for i, c in enumerate(CHANNELS)}


def ground_truth_table() -> np.ndarray:
    """Acceptance probability ``[segment, offer, channel]`` for a neutral customer.

    Axes follow :data:`SEGMENTS`, :data:`OFFERS` and :data:`CHANNELS`; a neutral
    customer holds nothing, has no recent complaint, credit check, impression
    or visit, and has churn risk 0.25.
    """
    return 1.0 / (1.0 + np.exp(-_BASE_LOGITS))


def true_propensity(
    profile: Profile, offer_id: str, channel: str, now: float, abandoned: str | None = None
) -> float:
    """The true acceptance probability for this customer, offer and channel now.

    The segment is read from ``profile.attrs["segment"]``; the table gives the
    base, :data:`BEHAVIOUR_EFFECTS` the shifts. ``abandoned`` is the product of
    the last abandoned application, which only the simulated world knows (the
    profile sees the cart's value, not what was in it).
    """
    fx = BEHAVIOUR_EFFECTS
    x = _BASE_LOGITS[
        _SEG_INDEX[profile.attrs["segment"]], _OFFER_INDEX[offer_id], _CHANNEL_INDEX[channel]
    ]
    product = OFFER_PRODUCT[offer_id]
    if product is not None and product in profile.holdings:
        x += fx["holds_product"]
    for key, fact in (
        ("complaint_30d", "complaint"),
        ("credit_fail_30d", "credit_check:fail"),
        ("credit_pass_30d", "credit_check:pass"),
    ):
        since = profile.since(fact, now)
        if since is not None and since <= 30 * DAY:
            x += fx[key].get(offer_id, 0.0)
    churn = float(profile.attrs.get("churn_risk", 0.25))
    x += fx["churn_risk"].get(offer_id, 0.0) * (churn - 0.25)
    shown = rejected = 0
    for ts, hist_offer, _ch, kind in profile.history:
        if hist_offer != offer_id:
            continue
        if kind == "impression" and ts >= now - 30 * DAY:
            shown += 1
        elif kind == "rejected" and ts >= now - 7 * DAY:
            rejected = 1
    x += fx["impression_30d"] * shown + fx["rejected_7d"] * rejected
    s = profile.session
    in_visit = s is not None and now - s.last_ts <= SESSION_GAP_S
    if channel in ("web", "app") and in_visit and len(s.pages) >= 5:
        x += fx["engaged_visit"]
    if (
        product is not None
        and profile.abandoned_cart is not None
        and abandoned == product
        and now - profile.abandoned_cart[0] <= 7 * DAY
    ):
        x += fx["abandoned_application_7d"]
    return _sigmoid(float(x))


# -- the demo model's features -----------------------------------------------------

DEMO_FEATURES: list[dict[str, Any]] = [
    {"name": "attr.age", "kind": "numeric", "default": 40, "cap": 100},
    {"name": "attr.income", "kind": "log1p", "default": 40000},
    {"name": "attr.tenure_years", "kind": "numeric", "default": 0, "cap": 60},
    {"name": "attr.churn_risk", "kind": "numeric", "default": 0.25, "cap": 1},
    {"name": "attr.segment", "kind": "onehot", "values": list(SEGMENTS)},
    {"name": "holdings", "kind": "onehot", "values": list(PRODUCTS)},
    {"name": "count.complaint.30d", "kind": "numeric", "cap": 10},
    {"name": "since.complaint", "kind": "since", "scale": 30 * DAY},
    {"name": "since.credit_check:fail", "kind": "since", "scale": 30 * DAY},
    {"name": "since.credit_check:pass", "kind": "since", "scale": 30 * DAY},
    {"name": "count.page_view.7d", "kind": "log1p", "cap": 1000},
    {"name": "session.pages", "kind": "numeric", "cap": 50},
    {"name": "abandoned_cart.value", "kind": "log1p"},
    {"name": "context.hour", "kind": "numeric", "default": 12},
    {"name": "context.weekday", "kind": "numeric", "default": 0},
    {"name": "context.device", "kind": "onehot", "values": ["desktop", "mobile", "tablet"]},
    {"name": "offer.id", "kind": "onehot", "values": list(OFFERS)},
    {"name": "offer.channel", "kind": "onehot", "values": list(CHANNELS)},
    {"name": "consent.channel", "kind": "bool", "default": 1},
    {"name": "offer.impressions.30d", "kind": "numeric", "cap": 20},
    {"name": "offer.since_rejection", "kind": "since", "scale": 7 * DAY},
    {"name": "channel.impressions.7d", "kind": "numeric", "cap": 20},
]


# -- customers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferCandidate:
    """A shown offer, as :mod:`models.decisioning.facts` sees candidates."""

    offer_id: str
    group: str
    channel: str
    placement: str | None
    treatment_id: str = "default"
    value: float = 0.0
    tags: tuple[str, ...] = ()


def offer_candidate(offer_id: str, channel: str) -> OfferCandidate:
    return OfferCandidate(
        offer_id, OFFER_GROUP[offer_id], channel, PLACEMENT[channel], "default",
        OFFER_VALUE[offer_id],
    )  # fmt: skip


def decision_context(channel: str, ts: float, mobile: bool = False) -> dict[str, Any]:
    """The request context a channel would send (hour and weekday in UTC)."""
    when = datetime.fromtimestamp(ts, tz=timezone.utc)
    device = None
    if channel == "web":
        device = "mobile" if mobile else "desktop"
    elif channel == "app":
        device = "mobile"
    return {
        "channel": channel,
        "placement": PLACEMENT[channel],
        "device": device,
        "hour": when.hour,
        "weekday": when.weekday(),
    }


def neutral_profile(segment: str, now: float = START) -> Profile:
    """A customer as :func:`ground_truth_table` assumes: typical of ``segment``,
    holding nothing, with no history; for checking a model against the table."""
    lo, hi = _AGE[segment]
    p = Profile(f"neutral-{segment}")
    p.attrs = {
        "segment": segment,
        "age": (lo + hi) // 2,
        "income": float(_INCOME_MEDIAN[segment]),
        "tenure_years": _TENURE_MEAN[segment],
        "churn_risk": 0.25,
    }
    p.first_seen = p.last_seen = now
    return p


_AGE = {"young": (18, 30), "family": (28, 50), "affluent": (35, 70), "senior": (65, 90)}
_INCOME_MEDIAN = {"young": 28_000, "family": 45_000, "affluent": 120_000, "senior": 30_000}
_TENURE_MEAN = {"young": 2.0, "family": 6.0, "affluent": 10.0, "senior": 20.0}
_HOLDS = {  # probability of holding each of PRODUCTS at the start
    "young": (0.25, 0.10, 0.20, 0.02, 0.01),
    "family": (0.45, 0.25, 0.40, 0.40, 0.05),
    "affluent": (0.60, 0.10, 0.60, 0.50, 0.30),
    "senior": (0.30, 0.05, 0.60, 0.15, 0.05),
}
_VISITS_PER_WEEK = {"young": 3.0, "family": 2.0, "affluent": 1.5, "senior": 0.7}
_APP_SHARE = {"young": 0.6, "family": 0.4, "affluent": 0.3, "senior": 0.1}
_MOBILE_WEB = {"young": 0.6, "family": 0.4, "affluent": 0.3, "senior": 0.15}
_BRANCH_PER_MONTH = {"young": 0.1, "family": 0.3, "affluent": 0.5, "senior": 1.0}
_CREDIT_FAIL = {"young": 0.35, "family": 0.2, "affluent": 0.05, "senior": 0.15}
_OPT_OUT = {"email": 0.10, "sms": 0.20, "outbound_call": 0.25}
_OUTBOUND_MIX = {"email": 0.6, "sms": 0.25, "outbound_call": 0.15}
_PAGES = ("/", "/cards", "/loans", "/savings", "/mortgages", "/premium", "/help")


@dataclass
class TrainingSet:
    """Decisions with their feature rows, labels and (when simulated) truth."""

    features: list[dict[str, Any]]
    columns: list[str]
    X: np.ndarray  # float32 [n, len(columns)]
    label: np.ndarray  # int8 [n]
    customer_id: np.ndarray  # str [n]
    offer_id: np.ndarray  # str [n]
    channel: np.ndarray  # str [n]
    segment: np.ndarray  # str [n] ("" when unknown)
    ts: np.ndarray  # float64 [n] decision time, epoch seconds
    p_true: np.ndarray  # float32 [n] (NaN when unknown)
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def summary(self) -> dict[str, Any]:
        """Rows, positives rate and date range, as written into a manifest."""
        n = len(self)
        iso = (
            [_iso(float(self.ts.min())), _iso(float(self.ts.max()))] if n else [None, None]
        )  # fmt: skip
        return {
            "source": self.source,
            "rows": n,
            "positives": int(self.label.sum()),
            "positives_rate": round(float(self.label.mean()), 5) if n else 0.0,
            "date_range": iso,
        }


@dataclass
class Simulation:
    """What :func:`simulate` returns."""

    training: TrainingSet
    events: list[dict[str, Any]]  # /v1/events objects; empty unless keep_events


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _CustomerWorld:
    """One customer's timeline: base behaviour plus decisions, applied in order."""

    def __init__(self, index: int, seed: int, days: float, builder: FeatureBuilder) -> None:
        # One generator per customer: customer i is the same whatever N is.
        self.rng = np.random.default_rng([seed, index])
        self.cid = f"cust-{index:06d}"
        self.days = days
        self.builder = builder
        self.profile = Profile(self.cid)
        self.queue: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.rows: list[tuple] = []
        self.events: list[dict[str, Any]] | None = None
        self.abandoned: str | None = None  # product of the last abandoned application
        self.segment = SEGMENTS[0]  # drawn by plan()
        self.mobile = False
        self.opted_out: set[str] = set()

    # scheduling ---------------------------------------------------------------

    def _push(self, ts: float, kind: str, payload: Any) -> None:
        ts = round(ts, 3)  # event timestamps are written with millisecond precision
        self.seq += 1
        heapq.heappush(self.queue, (ts, self.seq, kind, payload))

    def _event(self, ts: float, etype: str, channel: str | None = None, **kw: Any) -> None:
        ev = {"event_id": f"{self.cid}-{self.seq + 1}", "customer_id": self.cid, "type": etype}
        ev["ts"] = round(ts, 3)
        if channel is not None:
            ev["channel"] = channel
        ev.update(kw)
        self._push(ts, "event", ev)

    def _day_time(self) -> float:
        """A random moment in the period, mostly in waking hours."""
        day = int(self.rng.integers(0, int(self.days)))
        hour = float(np.clip(self.rng.normal(14.0, 4.0), 7.0, 23.5))
        return START + day * DAY + hour * 3600.0

    def _poisson(self, rate: float) -> int:
        return int(self.rng.poisson(rate))

    def plan(self) -> None:
        rng, weeks, months = self.rng, self.days / 7.0, self.days / 30.0
        seg = SEGMENTS[int(rng.choice(len(SEGMENTS), p=SEGMENT_SHARE))]
        lo, hi = _AGE[seg]
        attrs = {
            "segment": seg,
            "age": int(rng.integers(lo, hi + 1)),
            "income": round(float(_INCOME_MEDIAN[seg] * math.exp(rng.normal(0.0, 0.35))), -2),
            "tenure_years": round(float(rng.exponential(_TENURE_MEAN[seg])), 1),
            "churn_risk": round(float(rng.beta(2.0, 6.0)), 3),
        }
        self.segment = seg
        self.mobile = rng.random() < _MOBILE_WEB[seg]
        t0 = START + float(rng.uniform(0, 3600))
        self._event(t0, "profile_update", attributes=attrs)
        for i, product in enumerate(PRODUCTS):
            if rng.random() < _HOLDS[seg][i]:
                self._event(t0 + 1 + i, "purchase", "branch", attributes={"product": product})
        self.opted_out = {ch for ch, p in _OPT_OUT.items() if rng.random() < p}
        for ch in sorted(self.opted_out):
            self._event(t0 + 10, "opt_out", ch, attributes={"channel": ch})
        for _ in range(self._poisson(_VISITS_PER_WEEK[seg] * weeks)):
            self._plan_visit(seg)
        for _ in range(self._poisson(attrs["churn_risk"] * 1.2 * months)):
            t = self._day_time()
            self._event(t, "complaint", "call_center", attributes={"topic": "fees"})
            if rng.random() < 0.5:  # the agent gets a next-best-action prompt
                self._push(t + 120, "decide", "call_center")
        for _ in range(self._poisson(0.4 * months)):
            result = "fail" if rng.random() < _CREDIT_FAIL[seg] else "pass"
            self._event(self._day_time(), "credit_check", "web", attributes={"result": result})
        for _ in range(self._poisson(2.0 * weeks)):
            mix = {c: w for c, w in _OUTBOUND_MIX.items() if c not in self.opted_out}
            if mix:
                names, w = list(mix), np.array(list(mix.values()))
                ch = names[int(rng.choice(len(names), p=w / w.sum()))]
                self._push(self._day_time(), "decide", ch)
        for _ in range(self._poisson(_BRANCH_PER_MONTH[seg] * months)):
            self._push(self._day_time(), "decide", "branch")
        for _ in range(self._poisson(0.3 * months)):
            self._push(self._day_time(), "decide", "call_center")

    def _plan_visit(self, seg: str) -> None:
        rng = self.rng
        channel = "app" if rng.random() < _APP_SHARE[seg] else "web"
        t = self._day_time()
        pages = 1 + self._poisson(3.0)
        decide_after = int(rng.integers(1, pages + 1)) if rng.random() < 0.7 else -1
        for k in range(pages):
            page = _PAGES[int(rng.integers(0, len(_PAGES)))]
            self._event(t, "page_view", channel, attributes={"page": page})
            if k + 1 == decide_after:
                self._push(t + 1.0, "decide", channel)
            t += float(rng.uniform(20.0, 120.0))
        if rng.random() < 0.08:  # starts an application (the bank's "cart")
            product = PRODUCTS[int(rng.integers(0, len(PRODUCTS)))]
            amount = round(float(rng.uniform(500, 20000)), -1)
            self._event(
                t, "add_to_cart", channel,
                attributes={"item": product, "qty": 1, "price": amount},
            )  # fmt: skip
            if rng.random() < 0.4:
                self._event(t + 60, "purchase", channel, attributes={"product": product})
            else:
                self._push(t, "abandon", product)

    # running --------------------------------------------------------------------

    def run(self) -> None:
        p = self.profile
        end = START + self.days * DAY
        while self.queue:
            ts, _, kind, payload = heapq.heappop(self.queue)
            if ts > end:
                break
            if kind == "event":
                if self.events is not None:
                    self.events.append(payload)
                ev = parse_event(payload, 0, now=ts + 1.0)
                p.apply(ev, ts, SESSION_GAP_S)
            elif kind == "abandon":
                self.abandoned = payload
            else:
                self._decide(ts, payload)

    def _decide(self, ts: float, channel: str) -> None:
        rng, p = self.rng, self.profile
        if channel in self.opted_out:
            return
        offer = OFFERS[int(rng.integers(0, len(OFFERS)))]
        cand = offer_candidate(offer, channel)
        context = decision_context(channel, ts, mobile=self.mobile)
        x = self.builder.build(p, context, [cand], ts)[0]
        prob = true_propensity(p, offer, channel, ts, self.abandoned)
        accepted = bool(rng.random() < prob)
        self.rows.append((x, accepted, self.cid, offer, channel, self.segment, ts, prob))
        self._event(ts, "impression", channel, offer_id=offer)
        delay = 30.0 if channel in ("web", "app", "call_center", "branch") else 3600.0
        if accepted:
            attrs: dict[str, Any] = {"outcome": "accepted"}
            if OFFER_PRODUCT[offer]:
                attrs["product"] = OFFER_PRODUCT[offer]
        else:
            attrs = {"outcome": "rejected" if rng.random() < 0.5 else "ignored"}
        self._event(ts + delay, "response", channel, offer_id=offer, attributes=attrs)


def simulate(
    customers: int,
    seed: int = 7,
    days: int = 28,
    features: Sequence[Mapping[str, Any]] = DEMO_FEATURES,
    keep_events: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> Simulation:
    """Simulate ``customers`` customers over ``days`` days from :data:`START`.

    Deterministic for a given ``seed``. ``progress(done, total, rows)`` is
    called every few hundred customers.
    """
    if customers < 1 or days < 1:
        raise ValueError("customers and days must be at least 1")
    builder = FeatureBuilder(features)
    rows: list[tuple] = []
    events: list[dict[str, Any]] = []
    step = max(1, min(1000, customers // 20))
    for i in range(customers):
        world = _CustomerWorld(i, seed, days, builder)
        if keep_events:
            world.events = events
        world.plan()
        world.run()
        rows.extend(world.rows)
        if progress is not None and ((i + 1) % step == 0 or i + 1 == customers):
            progress(i + 1, customers, len(rows))
    n = len(rows)
    X = np.stack([r[0] for r in rows]) if n else np.zeros((0, builder.n_columns), np.float32)
    training = TrainingSet(
        features=builder.to_manifest(),
        columns=list(builder.columns),
        X=X.astype(np.float32, copy=False),
        label=np.array([r[1] for r in rows], dtype=np.int8),
        customer_id=np.array([r[2] for r in rows], dtype=str),
        offer_id=np.array([r[3] for r in rows], dtype=str),
        channel=np.array([r[4] for r in rows], dtype=str),
        segment=np.array([r[5] for r in rows], dtype=str),
        ts=np.array([r[6] for r in rows], dtype=np.float64),
        p_true=np.array([r[7] for r in rows], dtype=np.float32),
        source={
            "generator": "models.learning.simulator",
            "seed": seed,
            "customers": customers,
            "days": days,
            "start": _iso(START),
        },
    )
    return Simulation(training, events)


# -- training files ---------------------------------------------------------------

_META = ("label", "customer_id", "offer_id", "channel", "segment", "ts", "p_true")


def _header(data: TrainingSet) -> dict[str, Any]:
    return {
        "format": TRAINING_FORMAT,
        "features": data.features,
        "columns": data.columns,
        "source": data.source,
    }


def write_training_set(data: TrainingSet, path: str | Path) -> Path:
    """Write JSONL (``.jsonl``) or CSV (``.csv``); see the module docstring."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # '.9g' round-trips float32 exactly, so a file read back builds the same X.
    xs = (",".join(format(v, ".9g") for v in row) for row in data.X.tolist())
    meta = zip(
        *(getattr(data, name).tolist() for name in _META),
        strict=True,
    )
    with path.open("w", encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            f.write("#" + json.dumps(_header(data)) + "\n")
            w = csv.writer(f)
            w.writerow([*data.columns, *_META])
            for x, (y, cid, o, c, s, t, pt) in zip(xs, meta, strict=True):
                f.write(f"{x},{y},{cid},{o},{c},{s},{t:.3f},{pt:.6g}\n")
        else:
            f.write(json.dumps(_header(data)) + "\n")
            for x, (y, cid, o, c, s, t, pt) in zip(xs, meta, strict=True):
                f.write(
                    f'{{"x":[{x}],"label":{y},"customer_id":{json.dumps(cid)},'
                    f'"offer_id":{json.dumps(o)},'
                    f'"channel":{json.dumps(c)},"segment":{json.dumps(s)},'
                    f'"ts":{t:.3f},"p_true":{pt:.6g}}}\n'
                )
    return path


def read_training_set(
    path: str | Path, features: Sequence[Mapping[str, Any]] | None = None
) -> TrainingSet:
    """Read a file written by :func:`write_training_set` (or a compatible one).

    A CSV without the ``#`` header line needs ``features``; its columns must
    then include every feature column and ``label``.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        first = f.readline()
        if path.suffix == ".csv":
            header = json.loads(first[1:]) if first.startswith("#") else None
            body = f.read() if header is not None else first + f.read()
            return _read_csv(body, header, features, path)
        header = json.loads(first)
        records = [json.loads(line) for line in f if line.strip()]
    _check_header(header, path)
    X = np.array([r["x"] for r in records], dtype=np.float32).reshape(-1, len(header["columns"]))
    return TrainingSet(
        features=header["features"],
        columns=header["columns"],
        X=X,
        label=np.array([r["label"] for r in records], dtype=np.int8),
        customer_id=np.array([r.get("customer_id", "") for r in records], dtype=str),
        offer_id=np.array([r.get("offer_id", "") for r in records], dtype=str),
        channel=np.array([r.get("channel", "") for r in records], dtype=str),
        segment=np.array([r.get("segment", "") for r in records], dtype=str),
        ts=np.array([r.get("ts", 0.0) for r in records], dtype=np.float64),
        p_true=np.array([r.get("p_true", math.nan) for r in records], dtype=np.float32),
        source=header.get("source", {"file": str(path)}),
    )


def _check_header(header: Any, path: Path) -> None:
    if not isinstance(header, dict) or header.get("format") != TRAINING_FORMAT:
        raise ValueError(f"{path}: first line must be a {TRAINING_FORMAT} header")


def _read_csv(
    body: str, header: dict | None, features: Sequence[Mapping[str, Any]] | None, path: Path
) -> TrainingSet:
    if header is not None:
        _check_header(header, path)
        features = header["features"]
    if features is None:
        raise ValueError(f"{path}: a CSV without a header line needs the feature list")
    columns = list(FeatureBuilder(features).columns)
    rows = list(csv.reader(io.StringIO(body)))
    names, rows = rows[0], rows[1:]
    missing = [c for c in [*columns, "label"] if c not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    pos = {name: i for i, name in enumerate(names)}

    def col(name: str, dtype: Any, default: Any) -> np.ndarray:
        if name not in pos:
            return np.full(len(rows), default, dtype=dtype)
        return np.array([r[pos[name]] for r in rows]).astype(dtype)

    X = np.array([[r[pos[c]] for c in columns] for r in rows], dtype=np.float32)
    return TrainingSet(
        features=list(features),
        columns=columns,
        X=X.reshape(-1, len(columns)),
        label=col("label", np.int8, 0),
        customer_id=col("customer_id", str, ""),
        offer_id=col("offer_id", str, ""),
        channel=col("channel", str, ""),
        segment=col("segment", str, ""),
        ts=col("ts", np.float64, 0.0),
        p_true=col("p_true", np.float32, math.nan),
        source=(header or {}).get("source", {"file": str(path)}),
    )


# -- command line -------------------------------------------------------------------


def _report(done: int, total: int, rows: int) -> None:
    print(f"  simulated {done}/{total} customers, {rows} decisions", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m models.learning.simulator",
        description="Simulate customers and write training rows.",
    )
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True, help="training file, .jsonl or .csv")
    ap.add_argument("--events-out", help="also write the /v1/events objects (JSONL)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    sim = simulate(
        args.customers, args.seed, args.days, keep_events=bool(args.events_out), progress=_report
    )
    out = write_training_set(sim.training, args.out)
    summary = sim.training.summary()
    print(
        f"wrote {summary['rows']} rows ({summary['positives_rate']:.2%} accepted) to {out} "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    if args.events_out:
        path = Path(args.events_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for ev in sim.events:
                f.write(json.dumps(ev) + "\n")
        print(f"wrote {len(sim.events)} events to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
