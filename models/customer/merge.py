"""``merge_profiles``: folding an absorbed profile into the surviving one.

The rules, per part of the profile, are tabled in ``models/identity/__init__.py``.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain

from models.customer.profile import (
    HISTORY_HORIZON_S,
    HISTORY_MAX,
    SEEN_IDS,
    SEEN_STRUCT,
    SEEN_TTL_S,
    SESSION_EVENTS,
    SESSION_PAGES,
    Profile,
    Session,
    compact_buckets,
)

MERGED_FACT = "merged"  # last["merged:<id>"]: when that profile was absorbed here


# -- profile merge -----------------------------------------------------------------


def merge_profiles(
    survivor: Profile, absorbed: Profile, now: float, session_gap_s: float
) -> Profile:
    """Fold ``absorbed`` into ``survivor`` (mutated and returned) by the module's rules.

    ``absorbed`` is left as it was; the caller deletes it once the survivor is stored.
    """
    s, a = survivor, absorbed
    marker = f"{MERGED_FACT}:{a.customer_id}"
    if a.customer_id == s.customer_id or s.last.get(marker, -1.0) >= a.last_seen:
        return s  # already merged (a retry), and nothing new since
    s.attrs = _merge_attrs(s, a)
    for channel, allowed in a.consents.items():
        mine = s.consents.get(channel)
        s.consents[channel] = allowed if mine is None else (mine and allowed)
    for etype, buckets in a.counters.items():
        counts = _merge_buckets(s.counters.get(etype, []), buckets, now)
        if counts:
            s.counters[etype] = counts
    for key, ts in a.last.items():
        if ts > s.last.get(key, -1.0):
            s.last[key] = ts
    if a.first_seen and (not s.first_seen or a.first_seen < s.first_seen):
        s.first_seen = a.first_seen
    s.last_seen = max(s.last_seen, a.last_seen)
    s.history = _merge_history(s.history, a.history)
    s.holdings = s.holdings + [h for h in a.holdings if h not in s.holdings]
    s.seen = _merge_seen(s.seen, a.seen, now)
    s.session, closed = _merge_sessions(s.session, a.session, session_gap_s)
    for cart in (a.abandoned_cart, closed):
        if cart is not None and (s.abandoned_cart is None or cart[0] > s.abandoned_cart[0]):
            s.abandoned_cart = list(cart)
    if closed is not None:
        s.touch(closed[0], "cart_abandoned")
    s.last[marker] = a.last_seen
    return s


def _merge_attrs(s: Profile, a: Profile) -> dict:
    absorbed_newer = a.last.get("profile_update", -1.0) > s.last.get("profile_update", -1.0)
    attrs = dict(s.attrs)
    for key, value in a.attrs.items():
        if key not in attrs or absorbed_newer:
            attrs[key] = value
    if "total_spend" in s.attrs and "total_spend" in a.attrs:  # each side summed its purchases
        spend = float(s.attrs["total_spend"]) + float(a.attrs["total_spend"])
        attrs["total_spend"] = round(spend, 2)
    if "credit_check_result" in s.attrs and "credit_check_result" in a.attrs:
        newer = a if a.last.get("credit_check", -1.0) > s.last.get("credit_check", -1.0) else s
        attrs["credit_check_result"] = newer.attrs["credit_check_result"]
    return attrs


def _merge_buckets(mine: list, theirs: list, now: float) -> list:
    pairs = sorted(chain(zip(mine[0::2], mine[1::2]), zip(theirs[0::2], theirs[1::2])))
    return compact_buckets([x for pair in pairs for x in pair], now)


def _merge_history(mine: list, theirs: list) -> list:
    # An entry on both sides is one contact recorded under both ids; within one
    # side, equal entries are separate contacts and all stay.
    unmatched = Counter(tuple(h) for h in mine)
    extra = []
    for h in theirs:
        t = tuple(h)
        if unmatched[t]:
            unmatched[t] -= 1
        else:
            extra.append(list(h))
    h = sorted(mine + extra, key=lambda e: e[0])
    if not h:
        return h
    cutoff = h[-1][0] - HISTORY_HORIZON_S
    drop = 0
    while drop < len(h) and (h[drop][0] < cutoff or len(h) - drop > HISTORY_MAX):
        drop += 1
    return h[drop:]


def _merge_seen(mine: bytes, theirs: bytes, now: float) -> bytes:
    cutoff = now - SEEN_TTL_S
    newest: dict[bytes, int] = {}
    for ts, dig in chain(SEEN_STRUCT.iter_unpack(mine), SEEN_STRUCT.iter_unpack(theirs)):
        if ts >= cutoff and ts > newest.get(dig, -1):
            newest[dig] = ts
    entries = sorted((ts, dig) for dig, ts in newest.items())[-SEEN_IDS:]
    return b"".join(SEEN_STRUCT.pack(ts, dig) for ts, dig in entries)


def _merge_sessions(
    mine: Session | None, theirs: Session | None, gap_s: float
) -> tuple[Session | None, list | None]:
    """The continuing session, and ``[ts, value, items]`` of a visit closed with a cart."""
    if mine is None or theirs is None:
        other = theirs if mine is None else mine
        return (_copy_session(other) if other is not None else None), None
    newer, older = (theirs, mine) if theirs.last_ts > mine.last_ts else (mine, theirs)
    if newer.last_ts - older.last_ts > gap_s:
        closed = None
        if older.cart:
            items = sum(q for q, _ in older.cart.values())
            closed = [older.last_ts, older.cart_value(), items]
        return _copy_session(newer), closed
    first, second = (older, newer) if older.start <= newer.start else (newer, older)
    cart = {item: [q, p] for item, (q, p) in older.cart.items()}
    for item, (q, p) in newer.cart.items():
        cart[item] = [cart[item][0] + q, p] if item in cart else [q, p]
    events = sorted(mine.events + theirs.events, key=lambda e: e[0])[-SESSION_EVENTS:]
    return (
        Session(
            start=min(mine.start, theirs.start),
            last_ts=newer.last_ts,
            events=[list(e) for e in events],
            cart=cart,
            pages=(first.pages + second.pages)[-SESSION_PAGES:],
        ),
        None,
    )


def _copy_session(s: Session) -> Session:
    return Session(
        s.start,
        s.last_ts,
        [list(e) for e in s.events],
        {k: list(v) for k, v in s.cart.items()},
        list(s.pages),
    )
