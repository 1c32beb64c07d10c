"""The fact vocabulary: named values that rules and model features read.

Rules (``models/decisioning/rules.py``) and feature builders (``models/learning/features.py``) never
reach into a profile directly; they name a fact, and this module resolves the
name once into a getter ``(profile, context, candidate, now) -> value``.
Compiling names up front keeps the decision hot path to plain calls.

Names (dots separate parts; ``<window>`` is ``1h``/``24h``/``7d``/``30d`` or a
duration such as ``5m``/``90d``):

=============================  ==================================================
``attr.<name>``                profile attribute (``None`` when unset)
``holds.<product>``            True when the product is among the holdings
``holdings``                   list of products held
``consent.<channel>``          False when opted out of that channel (or of all)
``count.<event_type>.<win>``   events of that type in the rolling window
``since.<key>``                seconds since the last ``<key>`` fact
                               (event type, ``credit_check:fail``,
                               ``response:rejected``, ``cart_abandoned``) or None
``first_seen``/``last_seen``   epoch seconds
``tenure_days``                days since first seen
``session.active``             a visit is in progress
``session.events``             events in this visit
``session.pages``              pages viewed in this visit
``session.cart_items``         items in the cart now
``session.cart_value``         value of the cart now
``session.age``                seconds since the visit started (None if none)
``abandoned_cart.value``       value of the last abandoned cart (0 if none)
``context.<key>``              request context (``channel``, ``placement``,
                               ``device``, ``hour``, ``weekday`` are always set)
``offer.<field>``              candidate offer: ``id``, ``group``, ``value``,
                               ``channel``, ``placement``, ``tags``, ``treatment``
``offer.impressions.<win>``    impressions of this offer in the window
``offer.rejections.<win>``     rejections of this offer in the window
``offer.accepts.<win>``        acceptances of this offer in the window
``offer.since_impression``     seconds since this offer was last shown
``offer.since_rejection``      seconds since this offer was last rejected
``group.impressions.<win>``    impressions of any offer of the same group
``channel.impressions.<win>``  impressions on the candidate's channel
=============================  ==================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from models.customer.profile import IMPRESSION, Profile

Getter = Callable[[Profile, dict, Any, float], Any]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Candidate(Protocol):
    """What a fact needs of a candidate (an offer × treatment × channel)."""

    offer_id: str
    group: str
    channel: str
    placement: str | None
    treatment_id: str
    value: float
    tags: tuple[str, ...]


class UnknownFact(ValueError):
    """The name is not in the fact vocabulary."""


def parse_duration(text: str | int | float) -> float:
    """``"90d"`` → seconds; numbers are taken as seconds."""
    if isinstance(text, bool):
        raise ValueError("duration must be a number of seconds or like '5m', '24h', '90d'")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("duration must not be negative")
        return float(text)
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"bad duration {text!r}; use e.g. '30s', '5m', '24h', '90d', '2w'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _history_count(kind: str, window: float, key: Callable[[list, Any], bool]) -> Getter:
    def get(p: Profile, ctx: dict, cand: Any, now: float) -> int:
        cutoff = now - window
        return sum(1 for h in p.history if h[0] >= cutoff and h[3] == kind and key(h, cand))

    return get


def _history_since(kind: str) -> Getter:
    def get(p: Profile, ctx: dict, cand: Any, now: float) -> float | None:
        for h in reversed(p.history):
            if h[3] == kind and h[1] == cand.offer_id:
                return now - h[0]
        return None

    return get


def _same_offer(h: list, cand: Any) -> bool:
    return h[1] == cand.offer_id


def _same_channel(h: list, cand: Any) -> bool:
    return h[2] == cand.channel


def _session_get(fn: Callable) -> Getter:
    def get(p: Profile, ctx: dict, cand: Any, now: float) -> Any:
        return fn(p.session) if p.session is not None else None

    return get


def compile_fact(name: str, group_of: Callable[[str], str] | None = None) -> Getter:
    """Resolve a fact name to a getter; raise :class:`UnknownFact` if unknown.

    ``group_of`` maps an offer id to its group (needed by ``group.*`` facts).
    """
    parts = name.split(".")
    head = parts[0]
    try:
        if head == "attr" and len(parts) >= 2:
            key = name[5:]
            return lambda p, c, o, n: p.attrs.get(key)
        if head == "holds" and len(parts) >= 2:
            prod = name[6:]
            return lambda p, c, o, n: prod in p.holdings
        if name == "holdings":
            return lambda p, c, o, n: p.holdings
        if head == "consent" and len(parts) == 2:
            ch = parts[1]
            if ch == "channel":  # the candidate's own channel
                return lambda p, c, o, n: p.consented(o.channel)
            return lambda p, c, o, n: p.consented(ch)
        if head == "count" and len(parts) == 3:
            etype, win = parts[1], parse_duration(parts[2])
            return lambda p, c, o, n: p.count(etype, win, n)
        if head == "since" and len(parts) >= 2:
            key = name[6:]
            return lambda p, c, o, n: p.since(key, n)
        if name == "first_seen":
            return lambda p, c, o, n: p.first_seen
        if name == "last_seen":
            return lambda p, c, o, n: p.last_seen
        if name == "tenure_days":
            return lambda p, c, o, n: (n - p.first_seen) / 86400.0 if p.first_seen else 0.0
        if head == "session" and len(parts) == 2:
            return _session_fact(parts[1])
        if name == "abandoned_cart.value":
            return lambda p, c, o, n: p.abandoned_cart[1] if p.abandoned_cart else 0.0
        if head == "context" and len(parts) >= 2:
            key = name[8:]
            return lambda p, c, o, n: c.get(key)
        if head == "offer":
            return _offer_fact(parts[1:])
        if head == "group" and len(parts) == 3 and parts[1] == "impressions":
            if group_of is None:
                raise UnknownFact(f"{name}: group facts need the catalogue")
            win = parse_duration(parts[2])
            gof = group_of
            return _history_count(IMPRESSION, win, lambda h, cand: gof(h[1]) == cand.group)
        if head == "channel" and len(parts) == 3 and parts[1] == "impressions":
            return _history_count(IMPRESSION, parse_duration(parts[2]), _same_channel)
    except ValueError as exc:
        if isinstance(exc, UnknownFact):
            raise
        raise UnknownFact(f"{name}: {exc}") from None
    raise UnknownFact(f"unknown fact {name!r}")


def _session_fact(key: str) -> Getter:
    if key == "active":
        return lambda p, c, o, n: (
            p.session is not None and n - p.session.last_ts <= c.get("_session_gap_s", 1800)
        )
    table: dict[str, Callable] = {
        "events": lambda s: len(s.events),
        "pages": lambda s: len(s.pages),
        "cart_items": lambda s: sum(q for q, _ in s.cart.values()),
        "cart_value": lambda s: s.cart_value(),
    }
    if key == "age":
        return lambda p, c, o, n: None if p.session is None else n - p.session.start
    if key not in table:
        raise UnknownFact(f"unknown session fact {key!r}")
    fn = table[key]

    def get(p: Profile, c: dict, o: Any, n: float) -> Any:
        s = p.session
        if s is None or n - s.last_ts > c.get("_session_gap_s", 1800):
            return 0
        return fn(s)

    return get


_OFFER_FIELDS = {
    "id": lambda o: o.offer_id,
    "group": lambda o: o.group,
    "value": lambda o: o.value,
    "channel": lambda o: o.channel,
    "placement": lambda o: o.placement,
    "tags": lambda o: o.tags,
    "treatment": lambda o: o.treatment_id,
}


def _offer_fact(rest: list[str]) -> Getter:
    if len(rest) == 1 and rest[0] in _OFFER_FIELDS:
        fn = _OFFER_FIELDS[rest[0]]
        return lambda p, c, o, n: fn(o)
    if len(rest) == 2 and rest[0] in ("impressions", "rejections", "accepts"):
        kind = {"impressions": IMPRESSION, "rejections": "rejected", "accepts": "accepted"}[rest[0]]
        return _history_count(kind, parse_duration(rest[1]), _same_offer)
    if rest == ["since_impression"]:
        return _history_since(IMPRESSION)
    if rest == ["since_rejection"]:
        return _history_since("rejected")
    raise UnknownFact(f"unknown offer fact {'.'.join(['offer', *rest])!r}")
