"""A minimal HTTP/1.1 keep-alive client, cheap enough to share two cores with the server.

The benchmark client runs on the same machine as the server, so every
microsecond it spends is taken from the server. This client keeps one
:class:`asyncio.Protocol` per connection, sends requests that were encoded to
bytes up front, and frames responses by ``Content-Length`` (or chunked
encoding) without building header objects. ``bench --client-cost`` measures
it against aiohttp and locust's FastHttpUser.

It speaks just enough HTTP for a benchmark against a known server: one
request in flight per connection, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import os
from typing import NamedTuple

# The API key every load client sends (the benchmark sets it to the admin key
# of the server it starts; set it yourself for --url or locust).
API_KEY_ENV = "RTIM_API_KEY"


def auth_line() -> str:
    """The ``Authorization`` header line for ``$RTIM_API_KEY`` ("" if unset)."""
    key = os.environ.get(API_KEY_ENV, "")
    return f"Authorization: Bearer {key}\r\n" if key else ""


class Request(NamedTuple):
    """A request, before it is encoded for one host."""

    method: str
    path: str
    body: bytes = b""


def encode_request(req: Request, host: str, auth: str = "") -> bytes:
    """The request as bytes on the wire (JSON body, keep-alive); ``auth``: see :func:`auth_line`."""
    head = f"{req.method} {req.path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
    if req.body or req.method in ("POST", "PUT"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(req.body)}\r\n"
    return (head + "\r\n").encode() + req.body


class _ResponseReader(asyncio.Protocol):
    """Collects bytes until one whole response is in, then resolves the waiter."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = bytearray()
        self.lost: Exception | None = None
        self._head = -1  # length of the status line and headers, once they are in
        self._status = 0
        self._length = -1  # body length; -1 unknown (chunked or until close)
        self._chunked = False
        self.must_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("server closed the connection")
        w = self.waiter
        if w is not None and not w.done():
            if self._head >= 0 and self._length < 0 and not self._chunked:
                w.set_result((self._status, bytes(self.buf[self._head :])))  # body ends at close
            else:
                w.set_exception(self.lost)

    def _try_complete(self) -> None:
        buf = self.buf
        if self._head < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head = end + 4
            self._status = int(buf[9:12])
            headers = bytes(buf[:end]).lower()
            i = headers.find(b"\r\ncontent-length:")
            if i >= 0:
                j = headers.find(b"\r\n", i + 2)
                self._length = int(headers[i + 17 : j if j >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in headers:
                self._chunked = True
            elif self._status in (204, 304) or self._status < 200:
                self._length = 0
            self.must_close = b"\r\nconnection: close" in headers
        if self._length >= 0:
            end = self._head + self._length
            if len(buf) < end:
                return
            body = bytes(buf[self._head : end])
        elif self._chunked:
            found = _dechunk(buf, self._head)
            if found is None:
                return
            body, end = found
        else:
            return  # the body ends when the server closes
        del buf[:end]
        self._head = -1
        self._length = -1
        self._chunked = False
        assert self.waiter is not None
        self.waiter.set_result((self._status, body))


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, end offset) once the last chunk is in, else None."""
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            return (b"".join(parts), end + 4) if end >= 0 else None
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start : start + size]))
        pos = start + size + 2


class KeepAliveConnection:
    """One persistent connection; :meth:`send` one request at a time."""

    def __init__(self, transport: asyncio.Transport, reader: _ResponseReader) -> None:
        self._transport = transport
        self._reader = reader
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int) -> KeepAliveConnection:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(_ResponseReader, host, port)
        return cls(transport, reader)  # type: ignore[arg-type]

    @property
    def usable(self) -> bool:
        return self._reader.lost is None and not self._reader.must_close

    async def send(self, data: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
        """Send one encoded request; return ``(status, body)``."""
        reader = self._reader
        if reader.lost is not None:
            raise reader.lost
        waiter = reader.waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, _expire, waiter, timeout_s)
        try:
            self._transport.write(data)
            return await waiter
        except TimeoutError as exc:
            # The late response would answer the next request: drop the connection.
            reader.lost = exc
            self.close()
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        self._transport.close()


def _expire(waiter: asyncio.Future, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no response within {timeout_s:g}s"))
