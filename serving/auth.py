"""Who is calling: API keys, scopes and per-key rate limits, per ingress replica.

Routes declare the scope they need with ``dependencies=[require("decide")]``
(``None``: any valid key). The check is one dict lookup and one HMAC of the
presented secret; the replica's :class:`Gatekeeper` looks at the key file at
most once a second (a ``stat``; a reload only when it changed), so a revoked
key stops working on every replica within about a second.

Rate limits are per replica: each replica allows a key ``rps / replicas``
requests a second with a burst of ``burst / replicas``. That needs no shared
state on the hot path; HAProxy spreads a client's requests over the replicas,
so the total comes close to the key's limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from models.access import ApiKey, KeyStore, KeyTable
from models.errors import Forbidden, RateLimited, Unauthenticated
from models.rate import TokenBucket
from models.settings import Settings

log = logging.getLogger("rtim.auth")

REFRESH_S = 1.0
MISS_REFRESH_S = 0.1

_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="Authorization: Bearer <key>"
)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")


class Gatekeeper:
    """One replica's view of the key table and its keys' token buckets."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth
        self.store = KeyStore(settings.data_dir)
        self.replicas = settings.ingress_replicas
        self.table = KeyTable()
        self.signature: tuple[int, int] | None = None
        self.next_check = 0.0
        self.buckets: dict[str, TokenBucket] = {}

    def refresh(self, now: float) -> None:
        self.next_check = now + REFRESH_S
        signature = self.store.signature()
        if signature == self.signature:
            return
        try:
            self.table = self.store.load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read %s, keeping the keys loaded before: %s", self.store.path, exc)
            return
        self.signature = signature
        self.buckets = {k: b for k, b in self.buckets.items() if k in self.table.by_id}

    def admit(self, secret: str | None, scope: str | None) -> ApiKey | None:
        """The caller's key if it may call a route needing ``scope``; raises otherwise."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if now >= self.next_check:
            self.refresh(now)
        if not secret:
            raise Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
        key = self.table.authenticate(secret)
        if key is None and now >= self.next_check - REFRESH_S + MISS_REFRESH_S:
            # Maybe a key made a moment ago: look again, at most ten times a second.
            self.refresh(now)
            key = self.table.authenticate(secret)
        if key is None:
            raise Unauthenticated("unknown or revoked API key")
        if scope is not None and not key.allows(scope):
            raise Forbidden(f"API key {key.name!r} lacks the scope {scope!r}", None, "forbidden")
        if key.rps > 0:
            bucket = self.buckets.get(key.key_id)
            if bucket is None or bucket.rate != key.rps / self.replicas:
                bucket = TokenBucket(key.rps / self.replicas, max(1.0, key.burst / self.replicas))
                self.buckets[key.key_id] = bucket
            wait = bucket.take(now)
            if wait:
                raise RateLimited(f"API key {key.name!r} is over its rate of {key.rps}/s", wait)
        return key


def caller(request: Request) -> str:
    """The calling key's name, for the audit trail."""
    key = getattr(request.state, "key", None)
    return key.name if key is not None else "anonymous (auth off)"


def require(scope: str | None) -> Any:
    """A route dependency: the caller's key must hold ``scope`` (``None``: any key)."""

    async def check(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
        api_key: str | None = Security(_api_key),
    ) -> None:
        secret = api_key or (bearer.credentials if bearer is not None else None)
        request.state.key = request.app.state.gate.admit(secret, scope)

    return Depends(check)
