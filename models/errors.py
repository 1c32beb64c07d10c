"""The project's exception types, one per failure kind.

Every layer raises these; only the HTTP layer (``serving/``) decides which
status code and JSON body each becomes, so ``models/`` stays free of HTTP.
"""

from __future__ import annotations


class RtimError(Exception):
    """Base of every error the server reports to a client.

    ``code`` is a stable machine-readable string, ``field`` names the part of
    the request at fault (``events[3].ts``) or is ``None``.
    """

    code = "error"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ValidationError(RtimError):
    """The request is well-formed but a value in it is wrong or missing."""

    code = "invalid_request"


class MalformedBody(RtimError):
    """The body cannot be decoded (bad JSON or msgpack)."""

    code = "malformed_body"


class PayloadTooLarge(RtimError):
    """The body is larger than the configured limit."""

    code = "payload_too_large"


class UnsupportedMediaType(RtimError):
    """The body's content type is neither JSON nor msgpack."""

    code = "unsupported_media_type"


class NotFound(RtimError):
    """The named customer, model or route does not exist."""

    code = "not_found"


class CatalogError(RtimError):
    """A catalogue failed validation; ``field`` names offer, rule and field."""

    code = "invalid_catalog"


class ModelError(RtimError):
    """A propensity model cannot be loaded or does not match its manifest."""

    code = "invalid_model"


class IdentityConflict(RtimError):
    """Identifiers name different customers that must not merge automatically."""

    code = "identity_conflict"


class MoveInProgress(RtimError):
    """A partition move or scaling job is running; another must wait for it."""

    code = "move_in_progress"


class Unavailable(RtimError):
    """The server cannot take the work now (overload, shard down, disk)."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, None, code)
        self.retry_after_s = retry_after_s


class Unauthenticated(RtimError):
    """No API key, or one the server does not know (or has revoked)."""

    code = "unauthenticated"


class Forbidden(RtimError):
    """The API key is valid but lacks the scope the route needs."""

    code = "forbidden"


class RateLimited(RtimError):
    """The API key is over its request rate; retry after ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, None)
        self.retry_after_s = retry_after_s


_BY_CODE: dict[str, type[RtimError]] = {
    "invalid_request": ValidationError,
    "malformed_body": MalformedBody,
    "not_found": NotFound,
    "invalid_catalog": CatalogError,
    "invalid_model": ModelError,
    "identity_conflict": IdentityConflict,
    "move_in_progress": MoveInProgress,
}


def error_from_dict(err: dict) -> RtimError:
    """Rebuild an error from its ``{"code", "message", "field"}`` form (e.g. a shard's reply)."""
    code = str(err.get("code") or "invalid_request")
    if code in ("unavailable", "storage_unavailable", "overloaded"):
        return Unavailable(str(err.get("message", "unavailable")), 5.0, code=code)
    cls = _BY_CODE.get(code, ValidationError)
    return cls(str(err.get("message", "request failed")), err.get("field"), code)
