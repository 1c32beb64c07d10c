"""Decide requests: :class:`DecideRequest` and the validation of what channels send.

:func:`parse_decide_request` / :func:`parse_decide_batch` raise
:class:`~models.errors.ValidationError` naming the field at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from models.customer.events import MAX_ATTRIBUTES, MAX_STRING_VALUE, require_id
from models.decisioning.catalog import Catalog
from models.errors import ValidationError

REQUEST_FIELDS = frozenset(
    {"customer_id", "channel", "channels", "placement", "context", "limit", "explain",
     "deadline_ms", "idempotency_key"}
)  # fmt: skip
RESERVED_CONTEXT = frozenset({"channel", "channels", "placement"})
MAX_CHANNELS = 16


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
    # The customer id came from an ingress replica's cached identifier lookup:
    # a shard that erased that profile since answers Erased instead of deciding.
    via_cache: bool = False
    # Decide once per (customer, key): a repeat answers the logged decision again
    # (a campaign re-run after a crash counts no impression twice).
    idempotency_key: str | None = None


_AFTER_CUSTOMER = tuple(f.name for f in fields(DecideRequest))[1:]


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
    rest = tuple(getattr(template, name) for name in _AFTER_CUSTOMER)
    # The constructor, not dataclasses.replace: that inspects the fields on
    # every call, a third of the batch's parsing cost.
    return [template] + [DecideRequest(cid, *rest) for cid in items[1:]]


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
    key = require_id(body, "idempotency_key", f"{prefix}idempotency_key", required=False)
    return DecideRequest(
        customer_id,  # type: ignore[arg-type]
        channels,
        placement,
        context,
        limit,
        explain,
        deadline,
        idempotency_key=key,
    )


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
