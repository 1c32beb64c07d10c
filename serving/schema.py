"""OpenAPI descriptions of the request bodies.

Bodies are decoded and validated by ``models/`` (so JSON and msgpack share
one validator and one error format); these schemas only document them in
``/openapi.json`` and the interactive docs at ``/docs``.
"""

from __future__ import annotations

from typing import Any

from models.customer.events import EVENT_TYPES

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}

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
