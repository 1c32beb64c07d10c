"""The customer profile ("golden record") and how each event type updates it.

A profile is stored by its shard as one msgpack blob (see :meth:`Profile.pack`)
so that a million of them fit in memory; it is unpacked into this class only
while an event or a decision touches it.

Rolling-window counters use time buckets whose width grows with age: one
minute while younger than an hour, one hour while younger than a day, one day
after that, dropped after 30 days. A window count therefore errs by at most
one bucket at the window's far edge: 1 minute for ``1h``, 1 hour for ``24h``,
1 day for ``7d``/``30d``. Exact "time since" facts (last complaint, last
failed credit check) are kept separately in :attr:`Profile.last`.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import msgspec

from models.customer.events import Event

MINUTE, HOUR, DAY = 60, 3600, 86400
WINDOWS: dict[str, int] = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
COUNTER_HORIZON_S = 31 * DAY
SESSION_EVENTS = 20  # last N events kept in the current session
SESSION_PAGES = 20
HISTORY_MAX = 64  # contact/response history entries kept per profile
HISTORY_HORIZON_S = 90 * DAY
SEEN_IDS = 32  # event ids remembered per profile for idempotency ...
SEEN_TTL_S = DAY  # ... for at most this long
SEEN_STRUCT = struct.Struct("<I8s")  # (epoch seconds, digest) per remembered id
_PACK_VERSION = 1
# msgspec packs and unpacks the same msgpack as msgpack-python, 2x faster to pack:
# every event batch and every decision unpacks and packs the profiles it touches.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class _Head(msgspec.Struct, array_like=True):
    """The first fields of a packed profile; msgspec skips the rest without building them."""

    version: int
    attrs: dict


_head_decoder = msgspec.msgpack.Decoder(_Head)

# History entry kinds. An impression is a contact; the rest are responses.
IMPRESSION = "impression"


_SEEN_LAYOUTS: dict[int, struct.Struct] = {}


def seen_fields(seen: bytes) -> tuple:
    """The remembered ids as one flat tuple ``(ts, digest, ts, digest, ...)``.

    One ``struct`` call for all of them: the duplicate check runs for every
    event applied, and a Python loop over 32 entries cost more than the rest
    of applying a page view.
    """
    n = len(seen) // SEEN_STRUCT.size
    layout = _SEEN_LAYOUTS.get(n)
    if layout is None:
        layout = _SEEN_LAYOUTS[n] = struct.Struct("<" + "I8s" * n)
    return layout.unpack_from(seen)


def bucket_width(age_s: float) -> int:
    """Width of the counter bucket for an event ``age_s`` seconds old."""
    if age_s < HOUR:
        return MINUTE
    if age_s < DAY:
        return HOUR
    return DAY


def event_digest(event_id: str) -> bytes:
    """8-byte stable digest of an event id, used for duplicate detection."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


@dataclass(slots=True)
class Session:
    """The current visit: it ends after ``gap`` seconds without an event."""

    start: float
    last_ts: float
    events: list = field(default_factory=list)  # [[ts, type, detail], ...] newest last
    cart: dict = field(default_factory=dict)  # item -> [qty, unit_price]
    pages: list = field(default_factory=list)  # pages viewed, newest last

    def cart_value(self) -> float:
        return float(sum(q * p for q, p in self.cart.values()))

    def to_list(self) -> list:
        return [self.start, self.last_ts, self.events, self.cart, self.pages]

    def to_dict(self, now: float, gap_s: float) -> dict:
        return {
            "start": self.start,
            "last_event": self.last_ts,
            "active": now - self.last_ts <= gap_s,
            "events": [{"ts": e[0], "type": e[1], "detail": e[2]} for e in self.events],
            "cart": {k: {"qty": v[0], "price": v[1]} for k, v in self.cart.items()},
            "cart_value": self.cart_value(),
            "pages": list(self.pages),
        }


@dataclass(slots=True)
class Profile:
    """One customer's live state. Mutated only by its owning shard."""

    customer_id: str
    attrs: dict = field(default_factory=dict)
    consents: dict = field(default_factory=dict)  # channel (or "all") -> bool
    counters: dict = field(default_factory=dict)  # event type -> [start, count, start, count...]
    last: dict = field(default_factory=dict)  # fact key -> last epoch seconds
    first_seen: float = 0.0
    last_seen: float = 0.0
    session: Session | None = None
    history: list = field(default_factory=list)  # [[ts, offer_id, channel, kind], ...] by ts
    holdings: list = field(default_factory=list)  # products held
    seen: bytes = b""  # recent event ids: packed (u32 seconds, 8-byte digest) entries
    abandoned_cart: list | None = None  # [ts, value, n_items] of the last abandoned cart

    # -- storage ------------------------------------------------------------------

    def pack(self) -> bytes:
        s = self.session.to_list() if self.session is not None else None
        return _encoder.encode(
            [
                _PACK_VERSION,
                self.attrs,
                self.consents,
                self.counters,
                self.last,
                self.first_seen,
                self.last_seen,
                s,
                self.history,
                self.holdings,
                self.seen,
                self.abandoned_cart,
            ]
        )

    @classmethod
    def unpack(cls, customer_id: str, blob: bytes) -> Profile:
        (_v, attrs, consents, counters, last, first, last_seen, s, history, holdings, seen, ab) = (
            _decoder.decode(blob)
        )
        session = Session(*s) if s is not None else None
        return cls(
            customer_id, attrs, consents, counters, last, first, last_seen, session, history,
            holdings, seen, ab,
        )  # fmt: skip

    @classmethod
    def unpack_attrs(cls, customer_id: str, blob: bytes) -> Profile:
        """A profile with only ``blob``'s attributes: for tests of ``attr.*`` facts alone.

        About half the cost of :meth:`unpack` (no session, history or seen ids
        are built); segment rules over attributes scan every profile with it.
        """
        return cls(customer_id, _head_decoder.decode(blob).attrs)

    # -- queries used by rules, features and caps ----------------------------------

    def count(self, event_type: str, window_s: float, now: float) -> int:
        """Events of ``event_type`` within the last ``window_s`` seconds."""
        buckets = self.counters.get(event_type)
        if not buckets:
            return 0
        cutoff = now - window_s
        total = 0
        for i in range(len(buckets) - 2, -1, -2):
            if buckets[i] < cutoff:
                break
            total += buckets[i + 1]
        return total

    def since(self, key: str, now: float) -> float | None:
        """Seconds since the fact ``key`` (e.g. ``complaint``, ``credit_check:fail``)."""
        ts = self.last.get(key)
        return None if ts is None else now - ts

    def consented(self, channel: str) -> bool:
        """False when the customer opted out of ``channel`` (or of everything)."""
        if self.consents.get(channel) is False:
            return False
        return not (self.consents.get("all") is False and self.consents.get(channel) is not True)

    def session_active(self, now: float, gap_s: float) -> bool:
        return self.session is not None and now - self.session.last_ts <= gap_s

    def contacts(self, now: float, window_s: float, kind: str = IMPRESSION) -> list[list]:
        """History entries of ``kind`` within the window, newest last."""
        cutoff = now - window_s
        return [h for h in self.history if h[0] >= cutoff and h[3] == kind]

    # -- updates ------------------------------------------------------------------

    def is_duplicate(self, event_id: str, now: float) -> bool:
        """True when this event id was applied within the dedupe TTL."""
        return self.seen_digest(event_digest(event_id), now)

    def seen_digest(self, d: bytes, now: float) -> bool:
        """:meth:`is_duplicate` for an id's :func:`event_digest` (computed once per event)."""
        fields = seen_fields(self.seen)
        digests = fields[1::2]
        if d not in digests:  # the common case, decided in C
            return False
        cutoff = now - SEEN_TTL_S
        return any(dig == d and ts >= cutoff for ts, dig in zip(fields[0::2], digests))

    def remember(self, event_id: str, now: float) -> None:
        self.remember_digest(event_digest(event_id), now)

    def remember_digest(self, d: bytes, now: float) -> None:
        fields = seen_fields(self.seen)
        cutoff = now - SEEN_TTL_S
        kept = self.seen
        if fields and min(fields[0::2]) < cutoff:  # some expired: drop them
            kept = b"".join(
                SEEN_STRUCT.pack(ts, dig)
                for ts, dig in zip(fields[0::2], fields[1::2])
                if ts >= cutoff
            )
        self.seen = (kept + SEEN_STRUCT.pack(int(now), d))[-SEEN_IDS * SEEN_STRUCT.size :]

    def bump(self, key: str, ts: float, now: float) -> None:
        """Add one occurrence of ``key`` at ``ts`` to its rolling counter."""
        age = now - ts
        if age > COUNTER_HORIZON_S:
            return
        start = int(ts // bucket_width(max(age, 0.0)) * bucket_width(max(age, 0.0)))
        buckets = self.counters.get(key)
        if buckets is None:
            self.counters[key] = [start, 1]
            return
        starts = buckets[0::2]
        i = bisect_left(starts, start)
        if i < len(starts) and starts[i] == start:
            buckets[2 * i + 1] += 1
        else:
            buckets[2 * i : 2 * i] = [start, 1]
        self.counters[key] = compact_buckets(buckets, now)

    def touch(self, ts: float, key: str) -> None:
        if ts > self.last.get(key, -1.0):
            self.last[key] = ts

    def record_contact(self, ts: float, offer_id: str, channel: str | None, kind: str) -> None:
        entry = [ts, offer_id, channel, kind]
        h = self.history
        if not h or h[-1][0] <= ts:
            h.append(entry)
        else:
            h.insert(bisect_left([e[0] for e in h], ts), entry)
        cutoff = h[-1][0] - HISTORY_HORIZON_S
        drop = 0
        while drop < len(h) and (h[drop][0] < cutoff or len(h) - drop > HISTORY_MAX):
            drop += 1
        if drop:
            del h[:drop]

    def apply(self, ev: Event, now: float, session_gap_s: float) -> bool:
        """Apply one event; return False when it is a duplicate (already applied)."""
        d = event_digest(ev.event_id)
        if self.seen_digest(d, now):
            return False
        self.apply_unseen(ev, d, now, session_gap_s)
        return True

    def apply_unseen(self, ev: Event, digest: bytes, now: float, session_gap_s: float) -> None:
        """Apply an event whose id (``digest``: its :func:`event_digest`) the caller
        found unseen with :meth:`seen_digest`."""
        self.remember_digest(digest, now)
        ts = ev.ts
        if not self.first_seen or ts < self.first_seen:
            self.first_seen = ts
        self.last_seen = max(self.last_seen, ts)
        etype, attrs = ev.type, ev.attributes
        self.bump(etype, ts, now)
        self.touch(ts, etype)
        in_session = self._apply_session(ev, session_gap_s)
        handler = _HANDLERS.get(etype)
        if handler is not None:
            handler(self, ev, attrs, in_session)

    def _apply_session(self, ev: Event, gap_s: float) -> bool:
        """Add the event to the current session; False for a late event of an old visit."""
        ts = ev.ts
        s = self.session
        if s is not None and ts < s.start - gap_s:
            return False  # a late event from an earlier visit: history only
        if s is None or ts - s.last_ts > gap_s:
            self.close_session(gap_s)
            s = self.session = Session(ts, ts)
        s.start = min(s.start, ts)
        s.last_ts = max(s.last_ts, ts)
        detail = ev.attributes.get("page") or ev.attributes.get("item") or ev.offer_id
        s.events.append([ts, ev.type, detail])
        if len(s.events) > SESSION_EVENTS:
            del s.events[0]
        return True

    def close_session(self, gap_s: float) -> None:
        """End the current session; a non-empty cart is remembered as abandoned."""
        s = self.session
        if s is None:
            return
        if s.cart:
            self.abandoned_cart = [s.last_ts, s.cart_value(), sum(q for q, _ in s.cart.values())]
            self.touch(s.last_ts, "cart_abandoned")
        self.session = None

    # -- presentation -------------------------------------------------------------

    def to_dict(self, now: float, session_gap_s: float) -> dict[str, Any]:
        """The profile as the API shows it."""
        counters = {
            etype: {name: self.count(etype, w, now) for name, w in WINDOWS.items()}
            for etype in sorted(self.counters)
        }
        return {
            "customer_id": self.customer_id,
            "attributes": self.attrs,
            "consents": self.consents,
            "holdings": self.holdings,
            "counters": counters,
            "last": self.last,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "session": (
                self.session.to_dict(now, session_gap_s) if self.session is not None else None
            ),
            "abandoned_cart": (
                None
                if self.abandoned_cart is None
                else dict(zip(("ts", "value", "items"), self.abandoned_cart))
            ),
            "history": [
                {"ts": h[0], "offer_id": h[1], "channel": h[2], "kind": h[3]} for h in self.history
            ],
        }


def compact_buckets(buckets: list, now: float) -> list:
    """Re-bucket by age and drop what fell out of the longest window."""
    out: list = []
    horizon = now - COUNTER_HORIZON_S
    for i in range(0, len(buckets), 2):
        start, n = buckets[i], buckets[i + 1]
        if start < horizon:
            continue
        width = bucket_width(now - start)
        aligned = int(start // width * width)
        if out and out[-2] == aligned:
            out[-1] += n
        else:
            out.extend((aligned, n))
    return out


# -- per-type update rules ---------------------------------------------------------


def _page_view(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    page = attrs.get("page") or attrs.get("url")
    if page and in_session and p.session is not None:
        p.session.pages.append(str(page))
        if len(p.session.pages) > SESSION_PAGES:
            del p.session.pages[0]


def _cart(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    s = p.session
    if s is None or not in_session:
        return
    item, qty = attrs["item"], int(attrs.get("qty", 1))
    if ev.type == "add_to_cart":
        old = s.cart.get(item, [0, 0.0])
        s.cart[item] = [old[0] + qty, float(attrs.get("price", old[1]))]
    else:
        old = s.cart.get(item)
        if old is not None:
            if old[0] <= qty:
                del s.cart[item]
            else:
                old[0] -= qty


def _purchase(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    amount = float(attrs.get("amount", 0) or 0)
    p.attrs["total_spend"] = round(float(p.attrs.get("total_spend", 0.0)) + amount, 2)
    product = attrs.get("product")
    if isinstance(product, str) and product not in p.holdings:
        p.holdings.append(product)
    if in_session and p.session is not None:
        p.session.cart.clear()
    p.abandoned_cart = None


def _credit_check(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    result = attrs["result"]
    p.touch(ev.ts, f"credit_check:{result}")
    if ev.ts >= p.last.get("credit_check", 0):
        p.attrs["credit_check_result"] = result


def _consent(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    channel = attrs.get("channel") or ev.channel
    allowed = ev.type == "opt_in"
    if channel == "all" and allowed:
        p.consents.clear()
    p.consents[channel] = allowed


def _profile_update(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    for key, value in attrs.items():
        if value is None:
            p.attrs.pop(key, None)
        else:
            p.attrs[key] = value


def _impression(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    p.record_contact(ev.ts, ev.offer_id or "", ev.channel, IMPRESSION)


def _response(p: Profile, ev: Event, attrs: dict, in_session: bool) -> None:
    outcome = attrs["outcome"]
    if ev.offer_id:
        p.record_contact(ev.ts, ev.offer_id, ev.channel, outcome)
        p.touch(ev.ts, f"response:{outcome}")
        product = attrs.get("product")
        if outcome == "accepted" and product and product not in p.holdings:
            p.holdings.append(product)


_HANDLERS = {
    "page_view": _page_view,
    "add_to_cart": _cart,
    "remove_from_cart": _cart,
    "purchase": _purchase,
    "credit_check": _credit_check,
    "opt_out": _consent,
    "opt_in": _consent,
    "profile_update": _profile_update,
    "impression": _impression,
    "response": _response,
}
