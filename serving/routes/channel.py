"""Channel routes: record events, decide for one customer or many, read decisions."""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from models.customer.events import parse_event_batch
from models.decisioning.request import parse_decide_batch, parse_decide_request
from models.errors import NotFound, ValidationError
from models.identity.config import parse_identifiers
from serving import schema
from serving.auth import require
from serving.codec import read_body
from serving.ingress import Ingress, arrival, sheds_with_503
from serving.routes.common import API, answer, ingress_of

router = APIRouter()


@router.post(
    f"{API}/events",
    tags=["events"],
    summary="Record customer events",
    dependencies=[require("events:write")],
    responses=schema.typed(schema.EVENTS_ANSWER, "every event applied or a duplicate"),
    openapi_extra=schema.body(
        schema.EVENTS_BODY,
        "A batch is validated whole: one invalid event rejects the batch and "
        "nothing of it is applied. Answered after every owning shard applied its part.",
    ),
)
async def events(request: Request) -> Response:
    return await record_events(await ingress_of(request), request)


async def record_events(ing: Ingress, request: Request) -> Response:
    """``POST /v1/events`` after authentication (also the fast lane's path)."""
    s = ing.settings
    body = await read_body(request, s.max_body_bytes)
    batch = parse_event_batch(
        body, s.max_batch_events, None, s.max_future_skew_s, ing.identity_config
    )
    return answer(request, await ing.record_events(batch))


@router.post(
    f"{API}/decide",
    tags=["decisions"],
    summary="Next best action for one customer",
    dependencies=[require("decide")],
    responses=schema.typed(schema.DECISION),
    openapi_extra={
        **schema.body(
            schema.DECIDE_BODY,
            "An empty `offers` list means no message. `explain: true` adds the trace. "
            "If the owning shard cannot answer within `deadline_ms` (counted from "
            "`X-Request-Start` when given) the catalogue's fallback is returned with "
            "`fallback: true`, or 503 with `RTIM-On-Overload: reject`.",
        ),
        "parameters": schema.ADMISSION_HEADERS,
    },
)
async def decide(request: Request) -> Response:
    arrived = arrival(request, time.monotonic())
    return await decide_one(await ingress_of(request), request, arrived)


async def decide_one(ing: Ingress, request: Request, arrived: float) -> Response:
    """``POST /v1/decide`` after authentication (also the fast lane's path).

    ``arrived`` (monotonic s): when the request reached the server; the
    deadline counts from then (see :meth:`Ingress.decide`).
    """
    body = await read_body(request, ing.settings.max_body_bytes)
    ids, via_cache = None, False
    if isinstance(body, dict) and "identifiers" in body:
        body = dict(body)
        ids = parse_identifiers(body.pop("identifiers"), "identifiers", ing.identity_config)
        cid = body.get("customer_id")
        if cid is not None and (not isinstance(cid, str) or not cid):
            raise ValidationError("customer_id must be a non-empty string", "customer_id")
        ids = ing.with_customer_id(ids, cid)
        found = await ing.identity.resolve(ids, "identifiers")
        body["customer_id"], via_cache = found.profile_id, found.via_cache
    req = await ing.validated(
        lambda catalog: parse_decide_request(body, catalog, ing.settings.max_decide_limit)
    )
    if via_cache:
        req = dataclasses.replace(req, via_cache=True)
    record = await ing.decide(req, ids, arrived, shed_with_503=sheds_with_503(request))
    return answer(request, record.answer())


@router.post(
    f"{API}/decide/batch",
    tags=["decisions"],
    summary="Decisions for many customers (outbound campaigns)",
    dependencies=[require("decide")],
    responses=schema.typed(schema.DECISIONS, "one decision per customer, in request order"),
    openapi_extra=schema.body(
        schema.DECIDE_BATCH_BODY,
        'Either `{"requests": [decide bodies]}` or `{"customer_ids": [...], '
        "...shared decide fields}`. Answers are in request order.",
    ),
)
async def decide_batch(request: Request) -> Response:
    return await decide_many(await ingress_of(request), request)


async def decide_many(ing: Ingress, request: Request) -> Response:
    """``POST /v1/decide/batch`` after authentication (also the fast lane's path)."""
    s = ing.settings
    body = await read_body(request, s.max_body_bytes)
    reqs = await ing.validated(
        lambda catalog: parse_decide_batch(body, catalog, s.max_batch_decisions, s.max_decide_limit)
    )
    records = await ing.region.decide_batch(reqs)
    await ing.refresh_catalog(records)
    return answer(request, {"decisions": [r.answer() for r in records]})


@router.get(
    f"{API}/decisions/{{decision_id}}",
    tags=["decisions"],
    summary="A logged decision with its candidates, scores and outcomes",
    dependencies=[require("reports:read")],
    responses=schema.typed(schema.DECISION_ENTRY),
)
async def get_decision(decision_id: str, request: Request) -> Response:
    ing = await ingress_of(request)
    for entry in await ing.region.broadcast("get_decision", decision_id):
        if entry is not None:
            return answer(request, entry)
    raise NotFound(f"no logged decision {decision_id!r}", "decision_id")
