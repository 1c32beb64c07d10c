"""The HTTP application: :func:`create_app` builds it from one replica's :class:`Ingress`.

Channel, profile, admin and operations routes are separate routers
(``serving/routes/``). Every error is ``{"error": {"code", "message",
"field"}}`` (``serving/errors.py``). A plain ASGI middleware bounds the
requests in flight per replica, answering 503 + ``Retry-After`` beyond it;
inside it, :class:`~serving.fastlane.FastLane` serves the two hottest routes
without FastAPI's per-request machinery.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from models.errors import RtimError, Unavailable
from serving import schema
from serving.auth import Gatekeeper
from serving.errors import (
    error_response,
    handle_http_error,
    handle_request_validation,
    handle_rtim_error,
    handle_unexpected,
)
from serving.fastlane import FastLane
from serving.ingress import Ingress
from serving.routes import (
    adaptive,
    admin,
    channel,
    dashboard,
    history,
    operations,
    profiles,
    reports,
    segments,
)

DESCRIPTION = (
    "Real-time next-best-action decisions from live customer profiles held in "
    "sharded Ray actors. Bodies are JSON, or msgpack with "
    "`Content-Type: application/msgpack`. Errors are "
    '`{"error": {"code", "message", "field"}}`.'
)


class InflightBound:
    """Answer 503 + Retry-After beyond the replica's in-flight bound.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs more per
    request than a decision does.
    """

    def __init__(self, app: Any, ingress: Ingress) -> None:
        self.app = app
        self.ingress = ingress
        self.limit = ingress.settings.max_inflight_per_replica

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ingress = self.ingress
        if ingress.inflight >= self.limit:
            response = error_response(
                Request(scope), Unavailable("server overloaded; retry", 1.0, code="overloaded")
            )
            await response(scope, receive, send)
            return
        ingress.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            ingress.inflight -= 1


def create_app(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one replica, routes bound to ``ingress``."""
    app = FastAPI(title="RTIM decision server", version="0.1.0", description=DESCRIPTION)
    app.state.ingress = ingress
    app.state.gate = Gatekeeper(ingress.settings)
    app.add_exception_handler(RtimError, handle_rtim_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_request_validation)
    app.add_exception_handler(Exception, handle_unexpected)
    # Added first, so it runs inside the in-flight bound.
    app.add_middleware(FastLane, ingress=ingress, gate=app.state.gate)
    app.add_middleware(InflightBound, ingress=ingress)
    for router in (operations.router, channel.router, profiles.router, admin.router,
                   adaptive.router, segments.router, reports.router, history.router,
                   dashboard.router):  # fmt: skip
        app.include_router(router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = schema.document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
