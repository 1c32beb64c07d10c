"""The HTTP side of bulk jobs: msgpack bodies, retries with backoff, one clear give-up.

Connection errors, timeouts and 502/503/504 answers are retried with
exponential backoff (0.25 s doubling to 8 s) until ``retry_for_s`` has passed
since the first failure; then :class:`ServerGone` tells the command to stop
and print how to resume. Anything else is answered to the caller.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgpack

RETRYABLE_STATUS = frozenset({502, 503, 504})


class ImportAborted(Exception):
    """A bulk job cannot go on (strict mode, a refusing server); the message says why."""


class ServerGone(ImportAborted):
    """The server did not answer within the retry budget."""


def _decode(resp: httpx.Response) -> Any:
    """The answer's body as JSON or msgpack (as its content type says)."""
    try:
        if "msgpack" in resp.headers.get("content-type", ""):
            return msgpack.unpackb(resp.content, raw=False)
        return resp.json()
    except ValueError:
        return {"error": {"message": resp.text[:200]}}


class RetryingClient:
    """Posts msgpack bodies (or GETs); retries what is retryable for ``retry_for_s``."""

    def __init__(
        self, client: httpx.AsyncClient, retry_for_s: float, quiet: bool, job: str
    ) -> None:
        self.client = client
        self.retry_for_s = retry_for_s
        self.quiet = quiet
        self.job = job

    async def post(self, path: str, payload: Any, msgpack_answer: bool = False) -> tuple[int, Any]:
        """``(status, decoded body)`` of one POST, retrying server trouble with backoff.

        ``msgpack_answer`` asks for a msgpack answer: for large answers it is
        cheaper than JSON to encode on the server and to decode here.
        """
        body = msgpack.packb(payload, use_bin_type=True)
        accept = "application/msgpack" if msgpack_answer else "application/json"
        headers = {"content-type": "application/msgpack", "accept": accept}
        return await self._send(lambda: self.client.post(path, content=body, headers=headers))

    async def get(self, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        """``(status, decoded body)`` of one GET (msgpack answer), retried like :meth:`post`."""
        query = {k: v for k, v in params.items() if v is not None}
        headers = {"accept": "application/msgpack"}
        return await self._send(lambda: self.client.get(path, params=query, headers=headers))

    async def _send(self, request: Callable[[], Awaitable[httpx.Response]]) -> tuple[int, Any]:
        delay, first_failure = 0.25, None
        while True:
            try:
                resp = await request()
                if resp.status_code not in RETRYABLE_STATUS:
                    return resp.status_code, _decode(resp)
                problem = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                if not self.quiet:
                    print(
                        f"rtim {self.job}: server not answering ({problem}); "
                        f"retrying for up to {self.retry_for_s:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
            if now - first_failure >= self.retry_for_s:
                raise ServerGone(
                    f"the server at {self.client.base_url} did not answer for "
                    f"{self.retry_for_s:g} s (last: {problem})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
