"""The fast lane: ``POST /v1/decide``, ``/v1/decide/batch`` and ``/v1/events`` as plain ASGI.

The hottest routes skip FastAPI's routing, dependency injection and
exception middleware, which cost more per request than a decision does (see
the README's Performance section). Everything a client can observe is the
same as through the router: the same scope check (:class:`Gatekeeper`), the
same body decoding and validation, the same handlers
(:func:`serving.routes.channel.decide_one`, ``record_events``) and the same
error bodies. The routes stay registered in FastAPI, so the OpenAPI document
still describes them (and answers any method or path this lane does not
take).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from models.errors import RtimError
from serving.auth import Gatekeeper
from serving.errors import error_response, handle_unexpected
from serving.ingress import Ingress, arrival
from serving.routes.channel import decide_many, decide_one, record_events
from serving.routes.common import API

Handler = Callable[[Ingress, Request, float], Awaitable[Response]]


async def _decide(ing: Ingress, request: Request, arrived: float) -> Response:
    return await decide_one(ing, request, arrival(request, arrived))


async def _events(ing: Ingress, request: Request, arrived: float) -> Response:
    return await record_events(ing, request)


async def _batch(ing: Ingress, request: Request, arrived: float) -> Response:
    return await decide_many(ing, request)


# path -> (scope the key needs, handler); POST only.
LANES: dict[str, tuple[str, Handler]] = {
    f"{API}/decide": ("decide", _decide),
    f"{API}/events": ("events:write", _events),
    f"{API}/decide/batch": ("decide", _batch),
}


def presented_secret(request: Request) -> str | None:
    """The API key the caller sent: ``X-API-Key`` or ``Authorization: Bearer``."""
    headers = request.headers
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization")
    if auth:
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return credentials
    return None


class FastLane:
    """ASGI middleware: serve :data:`LANES` directly, pass everything else on."""

    def __init__(self, app: Any, ingress: Ingress, gate: Gatekeeper) -> None:
        self.app = app
        self.ingress = ingress
        self.gate = gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        lane = LANES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if lane is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        required, handler = lane
        request = Request(scope, receive)
        try:
            request.state.key = self.gate.admit(presented_secret(request), required)
            response = await handler(await self.ingress.ready(), request, arrived)
        except RtimError as exc:
            response = error_response(request, exc)
        except Exception as exc:
            response = await handle_unexpected(request, exc)
        await response(scope, receive, send)
