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


def typed(schema: dict[str, Any], description: str = "OK", status: int = 200) -> dict[str, Any]:
    """``responses`` for a route whose ``status`` (200) answer has ``schema``."""
    return {status: {"description": description, "content": {_JSON: {"schema": schema}}}}


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


# Limits the validators in models/ enforce (events.py, request.py, identity/config.py);
# the batch sizes and `limit` are the default settings.
ID = {"type": "string", "minLength": 1, "maxLength": 256}
MAX_BATCH = 1000
MAX_DECIDE_LIMIT = 20

IDENTIFIERS = {
    "type": "object",
    "description": "typed identifiers, e.g. {cookie, device, email_sha256, account}; "
    "resolved (and linked) to one profile instead of or beside customer_id",
    "additionalProperties": ID,
}

EVENT = {
    "type": "object",
    "required": ["event_id", "type"],
    "description": "fields not listed here are ignored",
    "properties": {
        "event_id": {**ID, "description": "unique id; retries are deduplicated"},
        "customer_id": ID,
        "type": {"type": "string", "enum": sorted(EVENT_TYPES)},
        "ts": {
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            "description": "ISO-8601 or epoch seconds; default now",
        },
        "channel": ID,
        "attributes": {"type": "object", "maxProperties": 64},
        "offer_id": ID,
        "decision_id": ID,
        "identifiers": IDENTIFIERS,
    },
}

EVENTS_BODY = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "events": {"type": "array", "items": EVENT, "minItems": 1, "maxItems": MAX_BATCH}
    },
}

# The fields one decide request may carry (the batch's customer_ids form shares them).
_DECIDE_FIELDS = {
    "identifiers": IDENTIFIERS,
    "channel": ID,
    "channels": {"type": "array", "items": ID, "minItems": 1, "maxItems": 16},
    "placement": {"type": "string", "minLength": 1, "maxLength": 128},
    "context": {"type": "object"},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_DECIDE_LIMIT, "default": 1},
    "explain": {"type": "boolean", "default": False},
    "deadline_ms": {"type": "number", "exclusiveMinimum": 0},
    "idempotency_key": {
        **ID,
        "description": "decide once per customer and key: a repeat gets the logged decision "
        "again, and counts no impression (e.g. a campaign id)",
    },
}

DECIDE_BODY = {
    "type": "object",
    "description": "customer_id or identifiers, and channel or channels",
    "additionalProperties": False,
    "properties": {"customer_id": ID, **_DECIDE_FIELDS},
}

DECIDE_BATCH_BODY = {
    "type": "object",
    "description": "either requests (one body each), or customer_ids with the fields they share",
    "oneOf": [
        {
            "type": "object",
            "required": ["requests"],
            "additionalProperties": False,
            "properties": {
                "requests": {
                    "type": "array", "items": DECIDE_BODY, "minItems": 1, "maxItems": MAX_BATCH,
                }
            },
        },
        {
            "type": "object",
            "required": ["customer_ids"],
            "additionalProperties": False,
            "properties": {
                "customer_ids": {
                    "type": "array", "items": ID, "minItems": 1, "maxItems": MAX_BATCH,
                },
                **_DECIDE_FIELDS,
            },
        },
    ],
}  # fmt: skip


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


# -- answers of the read and admin routes -------------------------------------------


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An answer object: these keys always present (more may follow in later versions)."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_STRS = {"type": "array", "items": _STR}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
# One entry per shard: the shard's answer, or {"shard", "error"} when it failed.
_PER_SHARD = {"type": "array", "items": _OBJ}

STATUS = _object({"status": _STR})
READY = _object(
    {"status": _STR, "shards": _INT, "down": {"type": "array", "items": {"type": "integer"}},
     "degraded": _OBJ, "identity_down": {"type": "array", "items": {"type": "integer"}},
     "identity_degraded": _OBJ, "epoch": _INT},
)  # fmt: skip
NOOP = _object({"ok": _BOOL})

PROFILE = _object(
    {
        "customer_id": _STR,
        "attributes": {"type": "object", "description": "typed profile attributes"},
        "consents": {"type": "object", "additionalProperties": _BOOL},
        "holdings": _STRS,
        "counters": {
            "type": "object",
            "description": "event type -> window (1h, 24h, 7d, 30d) -> count",
            "additionalProperties": {"type": "object", "additionalProperties": _INT},
        },
        "last": {"type": "object", "additionalProperties": _NUM,
                 "description": "event type or offer key -> last time (epoch s)"},
        "first_seen": _NULLABLE_NUM,
        "last_seen": _NULLABLE_NUM,
        "session": {"type": ["object", "null"]},
        "abandoned_cart": {"type": ["object", "null"]},
        "history": {"type": "array", "items": _OBJ, "description": "contact history"},
        "identifiers": {"type": "object", "additionalProperties": _STRS},
    }
)  # fmt: skip

LOGGED_CANDIDATE = _object(
    {"offer_id": _STR, "channel": _STR, "treatment": _STR},
    {"propensity": _NULLABLE_NUM, "priority": _NULLABLE_NUM},
)
DECISION_ENTRY = _object(
    {
        "decision_id": _STR, "customer_id": _STR, "ts": _NUM, "channels": _STRS,
        "catalog_version": _STR, "model_version": _NULLABLE_STR,
        "candidates": {"type": "array", "items": LOGGED_CANDIDATE},
        "chosen": {"type": "array", "items": _object(
            {"offer_id": _STR, "channel": _STR, "treatment": _STR, "probability": _NUM})},
        "impressions": _BOOL,
    },
    {
        "probability": {**_NUM, "description": "with which no message was chosen"},
        "predictors": _OBJ,
        "outcomes": {"type": "array", "items": _object(
            {"offer_id": _NULLABLE_STR, "outcome": _STR, "ts": _NUM})},
    },
)  # fmt: skip
DECISION_ENTRIES = _object({"decisions": {"type": "array", "items": DECISION_ENTRY}})
ERASED = _object({"deleted": _STR, "identifiers": _STRS})

CATALOG = _object(
    {"version": _STR, "channels": _OBJ, "offers": {"type": "array", "items": _OBJ}},
    {"description": _STR, "policies": _OBJ, "contact_policies": {"type": "array"},
     "arbitration": _OBJ, "learning": {"type": ["object", "null"]}},
)  # fmt: skip
CATALOG_CHANGED = _object({"failed": _PER_SHARD}, {"catalog_version": _STR, "shards": _PER_SHARD})
MODELS = _object({"active": _NULLABLE_STR, "available": _STRS, "shards": _PER_SHARD})
MODEL_CHANGED = _object({"model_version": _STR, "shards": _PER_SHARD, "failed": _PER_SHARD})
SNAPSHOTS = _object({"shards": _PER_SHARD})
AUDIT = _object(
    {"entries": {"type": "array", "items": _object(
        {"ts": _NUM, "who": _STR, "action": _STR, "target": _NULLABLE_STR, "result": _STR})}}
)  # fmt: skip
INGRESS_COUNTERS = _object({"decide_fallbacks": _INT, "inflight": _INT, "catalog_version": _STR})
SHARDS = _object({"epoch": _INT, "shards": _PER_SHARD},
                 {"identity_epoch": _INT, "identity_shards": _PER_SHARD})  # fmt: skip
MOVE_JOB = _object(
    {"running": _BOOL, "moves_total": _INT, "moves_done": _INT, "partitions_moved": _INT,
     "error": _NULLABLE_STR},
    {"target_shards": {"type": ["integer", "null"]},
     "target_identity_shards": {"type": ["integer", "null"]},
     "current": {"type": ["object", "null"]},
     "started_at": _NULLABLE_NUM, "finished_at": _NULLABLE_NUM, "last_moves": {"type": "array"},
     "map": _OBJ, "identity_map": _OBJ},
)  # fmt: skip
SCALE_REQUEST = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "shards": {"type": "integer", "description": "profile shards to end with"},
        "identity_shards": {"type": "integer", "description": "identity shards to end with"},
    },
}

NODES = _object(
    {"nodes": {"type": "array", "items": _object(
        {"node": _STR, "cpus": _NUM, "shards": {"type": "array", "items": _INT},
         "draining": _BOOL})},
     "shards": {"type": "array", "items": _object(
        {"shard": _INT, "node": _NULLABLE_STR})}},
)  # fmt: skip
REBALANCE_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"drain": {"type": "string", "minLength": 1, "maxLength": 128}},
}

ADAPTIVE_MODEL = _object(
    {"model": _STR, "responses": _INT, "positives": _INT, "success_rate": _NULLABLE_NUM,
     "auc": _NULLABLE_NUM, "maturity": _NUM, "frozen": _BOOL},
    {"top_predictors": {"type": "array"}},
)  # fmt: skip
ADAPTIVE_MODELS = _object(
    {"catalog_version": _STR, "models": {"type": "array", "items": ADAPTIVE_MODEL},
     "responses": {"type": "object", "additionalProperties": _INT}},
)  # fmt: skip
ADAPTIVE_EXPORT = _object({"model": _STR, "evidence": {"type": ["object", "null"]}})
ADAPTIVE_RESET = _object({"model": _NULLABLE_STR, "shards": _PER_SHARD})
ADAPTIVE_FROZEN = _object({"model": _STR, "frozen": _BOOL, "shards": _PER_SHARD})
SEGMENT_PAGE = _object({"shard": _INT, "shards": _INT})
# -- reports (GET /v1/reports/*; docs/reports.md) ------------------------------------------

_NUM = {"type": "number"}
_INT = {"type": "integer", "minimum": 0}
_RATE = {"type": ["number", "null"]}
_VOLUME_FIELDS = {
    "channel": {"type": "string"},
    "offer_id": {"type": ["string", "null"], "description": "null: no message"},
    "decisions": _INT,
    "impressions": _INT,
    "responses": {"type": "object", "additionalProperties": _INT},
    "positives": _INT,
    "success_rate": _RATE,
    "value": _NUM,
    "cost": _NUM,
    "fallbacks": _INT,
}
_VOLUME_TOTAL = {
    "type": "object",
    "required": ["channel", "offer_id", "decisions", "impressions", "responses", "positives",
                 "success_rate", "value", "cost"],
    "properties": _VOLUME_FIELDS,
}  # fmt: skip
REPORT_VOLUMES = {
    "type": "object",
    "required": ["since", "until", "bucket_s", "series", "totals"],
    "properties": {
        "since": _NUM,
        "until": _NUM,
        "bucket_s": {"type": "integer"},
        "series": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["ts", *_VOLUME_TOTAL["required"]],
                "properties": {"ts": _NUM, **_VOLUME_FIELDS},
            },
        },
        "totals": {"type": "array", "items": _VOLUME_TOTAL},
    },
}
_LIFT = {
    "type": ["object", "null"],
    "required": ["estimate", "ci_low", "ci_high", "significant"],
    "properties": {
        "estimate": _NUM,
        "ci_low": _NUM,
        "ci_high": _NUM,
        "significant": {"type": "boolean"},
    },
    "description": "relative lift (arm / control - 1), 95% CI by the delta method; "
    "null when undefined",
}
REPORT_EXPERIMENTS = {
    "type": "object",
    "required": ["experiments"],
    "properties": {
        "since": _NUM,
        "until": _NUM,
        "experiments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "control", "arms"],
                "properties": {
                    "name": {"type": "string"},
                    "control": {"type": "string"},
                    "arms": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["arm", "policy", "share", "decisions", "positives",
                                         "success_rate", "value_per_decision", "lift"],
                            "properties": {
                                "arm": {"type": "string"},
                                "policy": {"type": "string"},
                                "share": _NUM,
                                "decisions": _INT,
                                "positives": _INT,
                                "success_rate": _RATE,
                                "value_per_decision": _RATE,
                                "lift": {
                                    "type": ["object", "null"],
                                    "required": ["success_rate", "value_per_decision"],
                                    "properties": {
                                        "success_rate": _LIFT,
                                        "value_per_decision": _LIFT,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip
REPORT_MODELS = {
    "type": "object",
    "required": ["models"],
    "properties": {
        "since": _NUM,
        "until": _NUM,
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "evidence", "positives", "maturity", "auc", "auc_series"],
                "properties": {
                    "key": {"type": "string", "description": "offer@channel"},
                    "adaptive": {"type": "boolean"},
                    "evidence": _INT,
                    "positives": _INT,
                    "maturity": {"type": "number", "minimum": 0, "maximum": 1},
                    "auc": _RATE,
                    "auc_series": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["ts", "auc", "n"],
                            "properties": {"ts": _NUM, "auc": _RATE, "n": _INT},
                        },
                    },
                },
            },
        },
    },
}
REPORT_HEALTH = {
    "type": "object",
    "required": ["shards", "fallbacks"],
    "properties": {
        "since": _NUM,
        "until": _NUM,
        "shards": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "alive", "profiles", "decisions", "events_applied"],
                "properties": {
                    "name": {"type": "string"},
                    "alive": {"type": "boolean"},
                    "degraded": {"type": ["string", "null"]},
                    "profiles": _INT,
                    "decisions": _INT,
                    "events_applied": _INT,
                },
            },
        },
        "fallbacks": {
            "type": "object",
            "required": ["total", "series"],
            "properties": {
                "total": _INT,
                "series": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["ts", "fallbacks", "decisions"],
                        "properties": {"ts": _NUM, "fallbacks": _INT, "decisions": _INT},
                    },
                },
            },
        },
    },
}
# Headers of POST /v1/decide for admission control (see docs/api.md).
ADMISSION_HEADERS = [
    {
        "name": "RTIM-On-Overload",
        "in": "header",
        "required": False,
        "description": "What to answer when no decision can be made within the deadline: "
        "`fallback` (default; the catalogue's fallback with `fallback: true`) or `reject` "
        "(503 with `Retry-After` and error code `deadline`).",
        "schema": {"type": "string", "enum": ["fallback", "reject"]},
    },
    {
        "name": "X-Request-Start",
        "in": "header",
        "required": False,
        "description": "When the request reached the edge (`t=` + epoch seconds, ms or µs, "
        "as load balancers stamp it); the deadline counts from then.",
        "schema": {"type": "string"},
    },
]
