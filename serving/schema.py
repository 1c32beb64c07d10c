"""OpenAPI descriptions of the request and response bodies and the error answers.

Bodies are decoded and validated by ``models/`` (so JSON and msgpack share
one validator and one error format); these schemas only document them in
``/openapi.json`` and the interactive docs at ``/docs``.
"""

from __future__ import annotations

from typing import Any

from models.customer.events import EVENT_TYPES

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}

OFFER = {
    "type": "object",
    "required": ["offer_id", "channel", "treatment", "placement", "content", "value"],
    "properties": {
        "offer_id": {"type": "string"},
        "channel": {"type": "string"},
        "treatment": {"type": "string"},
        "placement": {"type": ["string", "null"]},
        "content": {"description": "the treatment's content reference, as in the catalogue"},
        "propensity": {"type": ["number", "null"], "description": "absent on a fallback"},
        "priority": {"type": ["number", "null"], "description": "absent on a fallback"},
        "value": {"type": ["number", "null"]},
    },
}

DECISION = {
    "type": "object",
    "required": ["decision_id", "customer_id", "offers", "catalog_version", "model_version",
                 "fallback"],
    "properties": {
        "decision_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "offers": {"type": "array", "items": OFFER, "description": "empty: no message"},
        "catalog_version": {"type": "string"},
        "model_version": {"type": ["string", "null"]},
        "fallback": {"type": "boolean"},
        "experiment": {"type": ["string", "null"],
                       "description": "the experiment the customer's arm belongs to"},
        "arm": {"type": ["string", "null"], "description": "the customer's experiment arm"},
        "probability": {"type": "number", "description": "of no message, when offers is empty"},
        "trace": {"type": "array", "items": {"type": "object"}, "description": "with explain"},
    },
}  # fmt: skip

_NUM_OR_NULL = {"type": ["number", "null"]}
HISTORY_ROW = {
    "type": "object",
    "required": ["decision_id", "customer_id", "ts"],
    "description": "a decision row, or with kind=outcome an outcome row (docs/history.md)",
    "properties": {
        "kind": {"type": "string", "enum": ["outcome"]},
        "decision_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "ts": {"type": "number"},
        "channels": {"type": "array", "items": {"type": "string"}},
        "catalog_version": {"type": "string"},
        "model_version": {"type": ["string", "null"]},
        "experiment": {"type": ["string", "null"]},
        "arm": {"type": ["string", "null"]},
        "policy": {"type": "string"},
        "fallback": {"type": "boolean"},
        "candidates": {"type": "array", "items": {"type": "object"}},
        "chosen": {"type": "array", "items": {"type": "object"}},
        "probability": {"type": "number"},
        "context": {"type": ["object", "null"]},
        "offer_id": {"type": ["string", "null"]},
        "outcome": {"type": "string"},
        "positive": {"type": "boolean"},
        "value": _NUM_OR_NULL,
    },
}

HISTORY_PAGE = {
    "type": "object",
    "required": ["shards", "since", "until", "rows", "next"],
    "properties": {
        "shards": {"type": "integer", "minimum": 1},
        "since": {"type": "number"},
        "until": {"type": "number"},
        "rows": {"type": "array", "items": HISTORY_ROW},
        "next": {"type": ["string", "null"], "description": "cursor of the next page; null: done"},
    },
}

DECISIONS = {
    "type": "object",
    "required": ["decisions"],
    "properties": {"decisions": {"type": "array", "items": DECISION}},
}

EVENTS_ANSWER = {
    "type": "object",
    "required": ["accepted", "applied", "duplicates"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "applied": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "identity": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "profiles merged or identifiers dropped while recognising",
        },
    },
}

# What each error status means; every one has the ERROR body.
ERROR_STATUSES = {
    "400": "invalid request (the error names the field)",
    "401": "no API key, or an unknown or revoked one",
    "403": "the API key lacks the scope this operation needs",
    "404": "not found",
    "409": "identifiers name two different known customers",
    "413": "body or batch too large",
    "415": "the body is not JSON or msgpack (or YAML for the catalogue)",
    "422": "the catalogue or model fails validation",
    "429": "the API key is over its rate limit; see Retry-After",
    "503": "overloaded, starting, or a shard is down; see Retry-After",
}
_JSON = "application/json"


def _statuses(path: str, op: dict[str, Any]) -> list[str]:
    """The error statuses one operation can answer."""
    if not op.get("security"):  # /healthz, /readyz
        return ["503"] if path == "/readyz" else []
    out = ["401", "403", "429", "503"]
    if path == "/noop":
        return out
    out += ["400", "404"]
    if "requestBody" in op:
        out += ["413", "415"]
    if path.startswith(("/v1/events", "/v1/decide", "/v1/profiles")):
        out.append("409")
    if path in ("/v1/admin/catalog", "/v1/admin/models") and "requestBody" in op:
        out.append("422")
    return sorted(out)


def typed(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """``responses`` for a route whose 200 answer has ``schema``."""
    return {200: {"description": description, "content": {_JSON: {"schema": schema}}}}


def document_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Give every operation its real error answers, all with the ERROR body.

    FastAPI advertises a 422 ``HTTPValidationError`` for routes with
    parameters; this server answers parameter errors with 400 and the ERROR
    body, so that schema is dropped.
    """
    for path, methods in openapi.get("paths", {}).items():
        for op in methods.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in _statuses(path, op):
                entry = responses.setdefault(status, {"description": ERROR_STATUSES[status]})
                entry["content"] = {_JSON: {"schema": ERROR}}
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return openapi


IDENTIFIERS = {
    "type": "object",
    "description": "typed identifiers, e.g. {cookie, device, email_sha256, account}; "
    "resolved (and linked) to one profile instead of or beside customer_id",
    "additionalProperties": {"type": "string"},
}

EVENT = {
    "type": "object",
    "required": ["event_id", "type"],
    "properties": {
        "event_id": {"type": "string", "description": "unique id; retries are deduplicated"},
        "customer_id": {"type": "string"},
        "type": {"type": "string", "enum": sorted(EVENT_TYPES)},
        "ts": {
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            "description": "ISO-8601 or epoch seconds; default now",
        },
        "channel": {"type": "string"},
        "attributes": {"type": "object"},
        "offer_id": {"type": "string"},
        "decision_id": {"type": "string"},
        "identifiers": IDENTIFIERS,
    },
}

EVENTS_BODY = {
    "type": "object",
    "required": ["events"],
    "properties": {"events": {"type": "array", "items": EVENT}},
}

DECIDE_BODY = {
    "type": "object",
    "properties": {
        "customer_id": {"type": "string"},
        "identifiers": IDENTIFIERS,
        "channel": {"type": "string"},
        "channels": {"type": "array", "items": {"type": "string"}},
        "placement": {"type": "string"},
        "context": {"type": "object"},
        "limit": {"type": "integer", "minimum": 1, "default": 1},
        "explain": {"type": "boolean", "default": False},
        "deadline_ms": {"type": "number"},
    },
}

DECIDE_BATCH_BODY = {
    "type": "object",
    "required": ["requests"],
    "properties": {"requests": {"type": "array", "items": DECIDE_BODY}},
}


def body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is JSON or msgpack."""
    content = {"schema": schema}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": content, "application/msgpack": content},
        },
        "responses": {
            "400": {
                "description": "invalid request",
                "content": {"application/json": {"schema": ERROR}},
            },
            "413": {"description": "body or batch too large"},
            "415": {"description": "unsupported content type"},
            "503": {"description": "overloaded or a shard is down; see Retry-After"},
        },
    }
