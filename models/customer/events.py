"""Customer events: the accepted types, and validation of an incoming batch.

A batch is validated whole before anything is applied: the first invalid
event raises :class:`~models.errors.ValidationError` naming its field
(``events[3].attributes.result``) and nothing of the batch is applied.

A validated event travels to its shard as a plain :class:`Event` tuple
(cheap to serialise, no per-event class instances on the wire).

An event may carry ``identifiers`` (``{"cookie": "…", "account": "…"}``,
validated by :func:`models.identity.config.parse_identifiers`); ``customer_id`` is
then optional and left ``""`` for the ingress to fill in once it has resolved
the identifiers to a profile. An ``identify`` event carries identifiers and
nothing else: it links them (see ``models/identity/``).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple

from models.errors import ValidationError
from models.identity.config import DEFAULT_IDENTITY, IdentityConfig, parse_identifiers

EVENT_TYPES = frozenset(
    {
        "page_view",
        "add_to_cart",
        "remove_from_cart",
        "purchase",
        "complaint",
        "credit_check",
        "opt_out",
        "opt_in",
        "profile_update",
        "impression",
        "response",
        "identify",
    }
)
RESPONSE_OUTCOMES = frozenset({"accepted", "rejected", "clicked", "ignored"})
CREDIT_RESULTS = frozenset({"pass", "fail"})

MAX_ID_LEN = 256
MAX_ATTRIBUTES = 64
MAX_STRING_VALUE = 1024
MAX_INT = 2**53  # exact in JSON doubles and in msgpack
MAX_NUMBER = 1e15  # money and quantities: large, but sums stay finite
MAX_QTY = 1_000_000


class Event(NamedTuple):
    """One validated event, as applied by a shard."""

    event_id: str
    customer_id: str
    type: str
    ts: float
    channel: str | None
    attributes: dict[str, Any]
    offer_id: str | None
    decision_id: str | None
    identifiers: dict[str, str] | None = None  # type -> value, as sent


def parse_ts(value: Any, field: str, now: float, max_future_s: float) -> float:
    """Return epoch seconds from an ISO-8601 string or a number; default ``now``."""
    if value is None:
        return now
    if isinstance(value, bool):
        raise ValidationError("timestamp must be ISO-8601 or epoch seconds", field)
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"cannot parse timestamp {value!r}", field) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    else:
        raise ValidationError("timestamp must be ISO-8601 or epoch seconds", field)
    if not math.isfinite(ts) or ts < 0:
        raise ValidationError("timestamp out of range", field)
    if ts > now + max_future_s:
        raise ValidationError(f"timestamp is more than {max_future_s:g}s in the future", field)
    return ts


def require_id(obj: dict, key: str, field: str, required: bool = True) -> str | None:
    """Return a non-empty id string from ``obj[key]`` or raise naming ``field``."""
    value = obj.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{key} is required", field)
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} must be a non-empty string", field)
    if len(value) > MAX_ID_LEN:
        raise ValidationError(f"{key} is longer than {MAX_ID_LEN} characters", field)
    return value


def _check_number(value: Any, field: str) -> None:
    """Numbers must be finite and fit 64 bits (profiles are stored as msgpack)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise ValidationError(f"integers must lie within ±{MAX_INT}", field)
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= MAX_NUMBER):
        raise ValidationError(f"numbers must be finite and within ±{MAX_NUMBER:g}", field)


def _check_attributes(attrs: Any, field: str) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise ValidationError("attributes must be an object", field)
    if len(attrs) > MAX_ATTRIBUTES:
        raise ValidationError(f"at most {MAX_ATTRIBUTES} attributes per event", field)
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ValidationError("attribute names must be non-empty strings", field)
        if value is None or isinstance(value, (bool, int, float)):
            _check_number(value, f"{field}.{key}")
            continue
        if isinstance(value, str):
            if len(value) > MAX_STRING_VALUE:
                raise ValidationError("attribute value too long", f"{field}.{key}")
            continue
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            if len(value) > MAX_ATTRIBUTES:
                raise ValidationError("attribute list too long", f"{field}.{key}")
            for i, v in enumerate(value):
                _check_number(v, f"{field}.{key}[{i}]")
            continue
        raise ValidationError(
            "attribute values must be strings, numbers, booleans, null or lists of scalars",
            f"{field}.{key}",
        )
    return attrs


def _check_type_specific(etype: str, attrs: dict, ev: dict, field: str) -> None:
    afield = f"{field}.attributes"
    if etype in ("add_to_cart", "remove_from_cart"):
        item = attrs.get("item")
        if not isinstance(item, str) or not item:
            raise ValidationError(f"{etype} needs attributes.item (string)", f"{afield}.item")
        qty = attrs.get("qty", 1)
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise ValidationError(f"qty must be an integer from 1 to {MAX_QTY}", f"{afield}.qty")
        price = attrs.get("price", 0)
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise ValidationError("price must be a non-negative number", f"{afield}.price")
        if price > MAX_NUMBER / MAX_QTY:
            raise ValidationError("price is implausibly large", f"{afield}.price")
    elif etype == "purchase":
        amount = attrs.get("amount", 0)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValidationError("amount must be a non-negative number", f"{afield}.amount")
        if amount > MAX_NUMBER / 1000:
            raise ValidationError("amount is implausibly large", f"{afield}.amount")
    elif etype == "credit_check":
        if attrs.get("result") not in CREDIT_RESULTS:
            raise ValidationError(
                "credit_check needs attributes.result = pass|fail", f"{afield}.result"
            )
    elif etype in ("opt_out", "opt_in"):
        channel = attrs.get("channel", ev.get("channel"))
        if not isinstance(channel, str) or not channel:
            raise ValidationError(
                f"{etype} needs attributes.channel (a channel name or 'all')", f"{afield}.channel"
            )
    elif etype == "response":
        if attrs.get("outcome") not in RESPONSE_OUTCOMES:
            raise ValidationError(
                "response needs attributes.outcome = accepted|rejected|clicked|ignored",
                f"{afield}.outcome",
            )
        if ev.get("offer_id") is None and ev.get("decision_id") is None:
            raise ValidationError("response needs offer_id or decision_id", f"{field}.offer_id")
    elif etype == "impression" and ev.get("offer_id") is None:
        raise ValidationError("impression needs offer_id", f"{field}.offer_id")
    elif etype == "identify" and ev.get("identifiers") is None:
        raise ValidationError("identify needs identifiers", f"{field}.identifiers")


def parse_event(
    ev: Any,
    index: int,
    now: float,
    max_future_s: float = 300.0,
    identity: IdentityConfig | None = None,
) -> Event:
    """Validate one raw event object; ``index`` is used to name fields.

    ``identity`` configures the identifier types (default: the built-in ones).
    """
    field = f"events[{index}]"
    if not isinstance(ev, dict):
        raise ValidationError("each event must be an object", field)
    event_id = require_id(ev, "event_id", f"{field}.event_id")
    identifiers = None
    if ev.get("identifiers") is not None:
        identifiers = parse_identifiers(
            ev["identifiers"], f"{field}.identifiers", identity or DEFAULT_IDENTITY
        )
    customer_id = require_id(
        ev, "customer_id", f"{field}.customer_id", required=identifiers is None
    )
    etype = ev.get("type")
    if not isinstance(etype, str):
        raise ValidationError("type is required (string)", f"{field}.type")
    if etype not in EVENT_TYPES:
        raise ValidationError(
            f"unknown event type {etype!r}; expected one of {sorted(EVENT_TYPES)}", f"{field}.type"
        )
    ts = parse_ts(ev.get("ts"), f"{field}.ts", now, max_future_s)
    channel = require_id(ev, "channel", f"{field}.channel", required=False)
    attrs = _check_attributes(ev.get("attributes"), f"{field}.attributes")
    offer_id = require_id(ev, "offer_id", f"{field}.offer_id", required=False)
    decision_id = require_id(ev, "decision_id", f"{field}.decision_id", required=False)
    _check_type_specific(etype, attrs, ev, field)
    return Event(
        event_id, customer_id or "", etype, ts, channel, attrs, offer_id, decision_id, identifiers
    )


def parse_event_batch(
    body: Any,
    max_batch: int,
    now: float | None = None,
    max_future_s: float = 300.0,
    identity: IdentityConfig | None = None,
) -> list[Event]:
    """Validate ``{"events": [...]}`` whole; raise on the first bad event."""
    if not isinstance(body, dict):
        raise ValidationError("body must be an object with an 'events' list", None)
    events = body.get("events")
    if not isinstance(events, list):
        raise ValidationError("events must be a list", "events")
    if not events:
        raise ValidationError("events must not be empty", "events")
    if len(events) > max_batch:
        raise ValidationError(
            f"batch of {len(events)} events is over the limit of {max_batch}",
            "events",
            code="batch_too_large",
        )
    now = time.time() if now is None else now
    return [parse_event(ev, i, now, max_future_s, identity) for i, ev in enumerate(events)]
