"""How each project error becomes an HTTP status and a JSON error body.

Every error response, including unknown routes and unexpected failures, has
the body ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import logging
import math

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from models.errors import (
    CatalogError,
    Forbidden,
    IdentityConflict,
    MalformedBody,
    ModelError,
    MoveInProgress,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RtimError,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from serving.codec import encode, wants_msgpack

log = logging.getLogger("rtim.http")

STATUS: dict[type[RtimError], int] = {
    ValidationError: 400,
    MalformedBody: 400,
    NotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    CatalogError: 422,
    ModelError: 422,
    Unavailable: 503,
    IdentityConflict: 409,
    MoveInProgress: 409,
    Unauthenticated: 401,
    Forbidden: 403,
    RateLimited: 429,
}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def status_of(exc: RtimError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def error_response(request: Request, exc: RtimError) -> Response:
    status = status_of(exc)
    if isinstance(exc, ValidationError) and exc.code == "batch_too_large":
        status = 413
    headers = None
    if isinstance(exc, (Unavailable, RateLimited)):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="rtim"'}
    return encode(exc.to_dict(), wants_msgpack(request), status, headers)


async def handle_rtim_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RtimError)
    return error_response(request, exc)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "field": None}}
    return encode(body, wants_msgpack(request), exc.status_code, getattr(exc, "headers", None))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": {"code": "internal", "message": "internal server error", "field": None}}
    return encode(body, wants_msgpack(request), 500)


async def handle_request_validation(request: Request, exc: Exception) -> Response:
    """FastAPI's own parameter checks (path/query), in our error format."""
    errors = getattr(exc, "errors", lambda: [])()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    body = {
        "error": {"code": "invalid_request", "message": first.get("msg", "invalid"), "field": field}
    }
    return encode(body, wants_msgpack(request), 400)
