"""Decide requests, the decision cascade, and the :class:`Decision` it returns.

:func:`parse_decide_request` / :func:`parse_decide_batch` validate what a
channel service sends. :func:`decide_many` runs, per request:

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

The decision does not record impressions; the caller does (see the
catalogue's ``arbitration.impressions``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from models.catalog import CandidateSpec, Catalog
from models.errors import ModelError, ValidationError
from models.events import MAX_ATTRIBUTES, MAX_STRING_VALUE, require_id
from models.facts import Candidate
from models.policies import ContactLedger
from models.profile import Profile

REQUEST_FIELDS = frozenset(
    {"customer_id", "channel", "channels", "placement", "context", "limit", "explain",
     "deadline_ms"}
)  # fmt: skip
RESERVED_CONTEXT = frozenset({"channel", "channels", "placement"})
MAX_CHANNELS = 16


class PropensityScorer(Protocol):
    """What the cascade needs of a propensity model (see ``models/scoring.py``)."""

    version: str

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class DecideRequest:
    """A validated decide request."""

    customer_id: str
    channels: tuple[str, ...]
    placement: str | None = None
    context: dict = field(default_factory=dict)
    limit: int = 1
    explain: bool = False
    deadline_ms: float | None = None


@dataclass(slots=True)
class Decision:
    """What to say (``offers``, empty for "no action") and why."""

    customer_id: str
    channels: tuple[str, ...]
    offers: list[dict]  # offer_id, group, channel, treatment, placement, content, propensity, ...
    catalog_version: str
    model_version: str
    candidates: list[dict]  # every scored candidate, for the decision log
    chosen_probability: dict[str, float]  # offer id -> probability it was chosen (1.0)
    trace: list[dict] | None = None  # with explain: every candidate's fate

    @property
    def no_action(self) -> bool:
        return not self.offers

    def to_dict(self) -> dict:
        out = {
            "customer_id": self.customer_id,
            "channels": list(self.channels),
            "offers": self.offers,
            "no_action": not self.offers,
            "catalog_version": self.catalog_version,
            "model_version": self.model_version,
            "candidates": self.candidates,
            "chosen_probability": self.chosen_probability,
        }
        if self.trace is not None:
            out["trace"] = self.trace
        return out


# -- request parsing ------------------------------------------------------------------


def parse_decide_request(
    body: Any, catalog: Catalog | None = None, max_limit: int = 20
) -> DecideRequest:
    """Validate one decide body; raise :class:`ValidationError` naming the field."""
    return _parse_request(body, catalog, max_limit, "")


def parse_decide_batch(
    body: Any, catalog: Catalog | None = None, max_batch: int = 1000, max_limit: int = 20
) -> list[DecideRequest]:
    """Validate a batch: ``{"requests": [body, ...]}`` or shared fields for many customers.

    The second form is ``{"customer_ids": [...], "channel": ..., ...}``: every
    field of a decide body except ``customer_id``, applied to each customer.
    """
    if not isinstance(body, dict):
        raise ValidationError("body must be an object with 'requests' or 'customer_ids'", None)
    if ("requests" in body) == ("customer_ids" in body):
        raise ValidationError("give exactly one of 'requests' or 'customer_ids'", "requests")
    key = "requests" if "requests" in body else "customer_ids"
    items = body[key]
    if not isinstance(items, list) or not items:
        raise ValidationError(f"{key} must be a non-empty list", key)
    if len(items) > max_batch:
        raise ValidationError(
            f"batch of {len(items)} is over the limit of {max_batch}", key, code="batch_too_large"
        )
    if key == "requests":
        if len(body) > 1:
            extra = sorted(k for k in body if k != "requests")[0]
            raise ValidationError(f"unknown field {extra!r} next to 'requests'", extra)
        return [
            _parse_request(b, catalog, max_limit, f"requests[{i}].") for i, b in enumerate(items)
        ]
    for i, cid in enumerate(items):
        require_id({"customer_id": cid}, "customer_id", f"customer_ids[{i}]")
    shared = {k: v for k, v in body.items() if k != "customer_ids"}
    if "customer_id" in shared:
        raise ValidationError(
            "use customer_ids, not customer_id, with shared fields", "customer_id"
        )
    template = _parse_request({**shared, "customer_id": items[0]}, catalog, max_limit, "")
    return [template] + [replace(template, customer_id=cid) for cid in items[1:]]


def _parse_request(
    body: Any, catalog: Catalog | None, max_limit: int, prefix: str
) -> DecideRequest:
    if not isinstance(body, dict):
        raise ValidationError("a decide request must be an object", prefix.rstrip(".") or None)
    for key in body:
        if key not in REQUEST_FIELDS:
            raise ValidationError(
                f"unknown field {key!r}; expected {sorted(REQUEST_FIELDS)}", f"{prefix}{key}"
            )
    customer_id = require_id(body, "customer_id", f"{prefix}customer_id")
    channels = _parse_channels(body, catalog, prefix)
    placement = body.get("placement")
    if placement is not None:
        if not isinstance(placement, str) or not placement or len(placement) > 128:
            raise ValidationError("placement must be a non-empty string", f"{prefix}placement")
        if catalog is not None and not any(
            placement in catalog.channels[ch].placements for ch in channels
        ):
            raise ValidationError(
                f"no requested channel has placement {placement!r}", f"{prefix}placement"
            )
    limit = body.get("limit", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise ValidationError(f"limit must be an integer from 1 to {max_limit}", f"{prefix}limit")
    explain = body.get("explain", False)
    if not isinstance(explain, bool):
        raise ValidationError("explain must be true or false", f"{prefix}explain")
    deadline = body.get("deadline_ms")
    if deadline is not None:
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
            or deadline <= 0
        ):
            raise ValidationError("deadline_ms must be a positive number", f"{prefix}deadline_ms")
        deadline = float(deadline)
    context = _parse_context(body.get("context"), f"{prefix}context")
    return DecideRequest(customer_id, channels, placement, context, limit, explain, deadline)  # type: ignore[arg-type]


def _parse_channels(body: dict, catalog: Catalog | None, prefix: str) -> tuple[str, ...]:
    one, many = body.get("channel"), body.get("channels")
    if one is not None and many is not None:
        raise ValidationError("give channel or channels, not both", f"{prefix}channels")
    if one is None and many is None:
        raise ValidationError("channel (or channels) is required", f"{prefix}channel")
    if one is not None:
        names, fields = [one], [f"{prefix}channel"]
    else:
        if not isinstance(many, list) or not many:
            raise ValidationError("channels must be a non-empty list", f"{prefix}channels")
        if len(many) > MAX_CHANNELS:
            raise ValidationError(f"at most {MAX_CHANNELS} channels", f"{prefix}channels")
        names, fields = many, [f"{prefix}channels[{i}]" for i in range(len(many))]
    seen: set[str] = set()
    for name, where in zip(names, fields):
        if not isinstance(name, str) or not name:
            raise ValidationError("a channel must be a non-empty string", where)
        if catalog is not None and name not in catalog.channels:
            raise ValidationError(
                f"unknown channel {name!r}; expected one of {sorted(catalog.channels)}", where
            )
        if name in seen:
            raise ValidationError(f"channel {name!r} is listed twice", where)
        seen.add(name)
    return tuple(names)


def _parse_context(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError("context must be an object", where)
    if len(raw) > MAX_ATTRIBUTES:
        raise ValidationError(f"at most {MAX_ATTRIBUTES} context keys", where)
    for key, value in raw.items():
        if not isinstance(key, str) or not key or key.startswith("_"):
            raise ValidationError("context keys must be non-empty and not start with '_'", where)
        kf = f"{where}.{key}"
        if key in RESERVED_CONTEXT:
            raise ValidationError(f"set {key} as a top-level field, not in context", kf)
        if key in ("hour", "weekday"):
            top = 23 if key == "hour" else 6
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValidationError(f"{key} must be an integer from 0 to {top}", kf)
        elif key == "device" and value is not None and not isinstance(value, str):
            raise ValidationError("device must be a string", kf)
        elif not _context_value_ok(value):
            raise ValidationError(
                "context values must be strings, finite numbers, booleans, null or short lists", kf
            )
    return dict(raw)


def _context_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_STRING_VALUE
    if isinstance(value, list):
        return len(value) <= MAX_ATTRIBUTES and all(
            isinstance(v, (str, int, float)) and _context_value_ok(v) for v in value
        )
    return False


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
) -> Decision:
    """Decide for one customer (see the module docstring for the cascade)."""
    return decide_many([(profile, request)], catalog, scorer, now, session_gap_s)[0]


def decide_many(
    items: Sequence[tuple[Profile, DecideRequest]],
    catalog: Catalog,
    scorer: PropensityScorer,
    now: float,
    session_gap_s: float = 1800.0,
) -> list[Decision]:
    """Decide for many requests with one model run over all their candidates."""
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
        props = np.clip(np.nan_to_num(P, nan=0.0), 0.0, 1.0).tolist()
    version = str(getattr(scorer, "version", ""))
    out, start = [], 0
    for s in screens:
        n = len(s.to_score)
        out.append(_arbitrate(s, props[start : start + n], catalog, version, now))
        start += n
    return out


def _screen(
    profile: Profile, req: DecideRequest, catalog: Catalog, now: float, gap_s: float
) -> _Screen:
    t = time.gmtime(now)
    base = dict(req.context)
    base.setdefault("device", None)
    base.setdefault("hour", t.tm_hour)  # a request may pass the customer's local time
    base.setdefault("weekday", t.tm_wday)
    base["channel"] = req.channels[0]
    base["channels"] = req.channels
    base["placement"] = req.placement
    base["_session_gap_s"] = gap_s
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
    s: _Screen, props: list[float], catalog: Catalog, model_version: str, now: float
) -> Decision:
    req, profile = s.request, s.profile
    rows = []  # (net, priority, p, c, cand)
    it = iter(props)
    for cand, ctx in s.survivors:
        p = cand.propensity if cand.propensity is not None else next(it)
        c = cand.static_weight
        for test, weight in cand.weights:
            if test(profile, ctx, cand, now):
                c *= weight
        priority = p * c * cand.value * cand.levers
        rows.append((priority - cand.cost, priority, p, c, cand))
    rows.sort(key=_by_net)  # stable: ties keep channel order, then catalogue order
    explain = req.explain
    min_priority = catalog.arbitration.min_priority
    chosen: list[tuple] = []
    offers_taken: dict[str, str] = {}  # offer id -> channel
    groups_taken: dict[str, str] = {}  # group -> offer id
    notes: list[tuple[str, str] | None] = []
    for row in rows:
        if not explain and len(chosen) >= req.limit:
            break
        net, cand = row[0], row[4]
        note = None
        if net < min_priority:
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
        {
            "offer_id": c.offer_id, "group": c.group, "channel": c.channel,
            "treatment": c.treatment_id, "placement": c.placement, "content": c.content,
            "propensity": round(p, 6), "priority": round(pr, 4), "value": c.value,
        }
        for _, pr, p, _, c in chosen
    ]  # fmt: skip
    logged = [
        {"offer_id": c.offer_id, "channel": c.channel, "treatment": c.treatment_id,
         "propensity": round(p, 6), "priority": round(pr, 4)}
        for _, pr, p, _, c in rows
    ]  # fmt: skip
    trace = None
    if explain:
        trace = list(s.removed or ())
        trace.extend(
            _scored(row, rank, note) for rank, (row, note) in enumerate(zip(rows, notes), 1)
        )
    return Decision(
        customer_id=req.customer_id,
        channels=req.channels,
        offers=offers,
        catalog_version=catalog.version,
        model_version=model_version,
        candidates=logged,
        chosen_probability={o["offer_id"]: 1.0 for o in offers},
        trace=trace,
    )


def _by_net(row: tuple) -> float:
    return -row[0]


def _removed(cand: CandidateSpec, stage: str, rule: str, reason: str) -> dict:
    return {
        "offer_id": cand.offer_id, "channel": cand.channel, "treatment": cand.treatment_id,
        "placement": cand.placement, "stage": stage, "rule": rule, "reason": reason,
        "chosen": False,
    }  # fmt: skip


def _scored(row: tuple, rank: int, note: tuple[str, str] | None) -> dict:
    net, priority, p, c, cand = row
    out = {
        "offer_id": cand.offer_id, "channel": cand.channel, "treatment": cand.treatment_id,
        "placement": cand.placement, "stage": "arbitration", "p": round(p, 6), "c": round(c, 4),
        "v": cand.value, "l": cand.levers, "priority": round(priority, 4),
        "net_value": round(net, 4), "rank": rank, "chosen": note is None,
    }  # fmt: skip
    if note is not None:
        out["rule"], out["reason"] = note
    return out


def _dates(catalog: Catalog, cand: CandidateSpec) -> str:
    dates = catalog.offers[cand.offer_id].dates
    return f"offer runs from {dates.get('start', 'always')} to {dates.get('end', 'open end')}"
