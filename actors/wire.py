"""The shard wire: hot shard calls over a same-node Unix socket instead of a Ray actor call.

A Ray actor call costs about 0.6 ms of CPU in the caller and as much in the
actor (gRPC, the core worker's task machinery, its threads), whatever the
call carries; a decide costs the shard about 0.15 ms. A length-prefixed
frame over a Unix socket to the same process costs about 0.02 ms on each
side (an echo actor of 300 bytes, 8 calls in flight, on the 2-core box; the
whole-server effect is measured by ``loadtest/cpu_split.py``). So an ingress replica on the same
node as a shard sends its hot calls (:data:`WIRE_METHODS`) over the shard's
socket; everything else, replicas on other nodes, and any call while the
socket is not (yet, or no longer) there, go through Ray as before. Ray
still places, restarts, names and finds the shards: the wire is only a
cheaper pipe to the same actor, and its requests run on the actor's own
event loop, one after the other's ``await`` like Ray's async-actor calls,
so the shard's single-threaded state needs nothing new.

Frames: a 4-byte little-endian length, then msgpack. A request is
``[call_id, method, args]`` (msgpack only: the shard never unpickles what a
client sends); a reply is ``[call_id, kind, payload]`` with kind ``BYTES``
(the method's bytes), ``OBJECT`` (a pickled refusal such as ``StaleEpoch``:
the client trusts its shard) or ``ERROR`` (the exception's text). Calls
are multiplexed on one connection per replica and shard, answered in any
order.

Bounds: a connection has at most ``max_calls`` (default
:data:`MAX_CALLS_PER_CONNECTION`) calls in flight; at the bound the shard
stops reading it until one is answered, and a reply waits for the socket to
take it (``drain``), so a client that sends without reading holds at most
that many calls and their replies, not the shard's memory.

Retries: the replica sends a call through Ray instead when the wire fails
*before* the request was written (no socket, connect refused, link already
closed: :class:`WireBroken`). Once it was written the shard may have run it;
a connection that breaks then raises :class:`WireReplyLost`, and only calls in
:data:`RETRY_SAFE` (``apply_events``: events are deduplicated by id) are sent
again. A decide is not: without an idempotency key it would decide twice
(two impressions), so its caller gets ``Unavailable`` and answers with the
fallback, as for a shard that is down.

Who may connect: the socket lives in a directory only our user can open
(mode 0700), like Ray's own session directory; other users on the node
cannot reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

WIRE_METHODS = frozenset({"decide_packed", "apply_events"})  # hot, plain-data arguments
RETRY_SAFE = frozenset({"apply_events"})  # may run twice: events are deduplicated by event id
MAX_CALLS_PER_CONNECTION = 256  # calls in flight on one connection; then the shard stops reading
BYTES, OBJECT, ERROR = range(3)
MAX_FRAME = 256 << 20
_HEADER = struct.Struct("<I")
_encoder = msgspec.msgpack.Encoder()
_request = msgspec.msgpack.Decoder(tuple[int, str, list[Any]])
_reply = msgspec.msgpack.Decoder(tuple[int, int, Any])


class WireBroken(ConnectionError):
    """The connection to a shard's socket failed or closed before the call was sent:
    use Ray, look the socket up again."""


class WireReplyLost(WireBroken):
    """The connection broke after the call was sent: the shard may have run it."""


class WireCallFailed(RuntimeError):
    """The shard raised while serving a wire call (a bug, like a Ray task error)."""


def socket_dir() -> Path:
    """Where this node's shard sockets live: private to our user."""
    d = Path(tempfile.gettempdir()) / f"rtim-wire-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _frame(obj: Any) -> bytes:
    body = _encoder.encode(obj)
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if n > MAX_FRAME:
        raise WireBroken(f"frame of {n} bytes is over the limit")
    return await reader.readexactly(n)


def _remove_stale(directory: Path, prefix: str) -> None:
    """Sockets of earlier processes of this shard (killed ones leave theirs behind)."""
    for old in directory.glob(f"{prefix}-*.sock"):
        pid = old.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                old.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WireServer:
    """A shard's socket: serves ``methods`` on the running event loop.

    ``max_calls``: calls in flight per connection (see the module docstring).
    """

    def __init__(
        self,
        name: str,
        methods: dict[str, Callable[..., Awaitable[Any]]],
        max_calls: int = MAX_CALLS_PER_CONNECTION,
    ) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, not {max_calls}")
        self.name = name
        self.methods = methods
        self.max_calls = max_calls
        self.path: str | None = None
        self.calls = 0  # calls started
        self.in_flight = 0  # calls started and not yet answered (or abandoned), all connections
        self._server: asyncio.AbstractServer | None = None
        self._starting = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        """Listen (once, however many callers ask at the same time); the socket's path."""
        async with self._starting:  # the check and the start are split by an await
            if self._server is None:
                directory = socket_dir()
                _remove_stale(directory, self.name)
                path = directory / f"{self.name}-{os.getpid()}.sock"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._server = await asyncio.start_unix_server(self._serve, str(path))
                os.chmod(path, 0o600)
                self.path = str(path)
        assert self.path is not None
        return self.path

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            if self.path:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slots = asyncio.Semaphore(self.max_calls)
        try:
            while True:
                await slots.acquire()  # at the bound: read no more until a call is answered
                call_id, method, args = _request.decode(await _read_frame(reader))
                task = asyncio.get_running_loop().create_task(
                    self._answer(writer, slots, call_id, method, args)
                )
                self._tasks.add(task)  # a strong reference until it is done
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, WireBroken):
            pass
        except msgspec.DecodeError:
            pass  # not our protocol: drop the connection
        finally:
            writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        slots: asyncio.Semaphore,
        call_id: int,
        method: str,
        args: list[Any],
    ) -> None:
        self.calls += 1
        self.in_flight += 1
        try:
            try:
                fn = self.methods.get(method)
                if fn is None:
                    raise WireCallFailed(f"method {method!r} is not served on the wire")
                result = await fn(*args)
                if isinstance(result, bytes):
                    reply = _frame((call_id, BYTES, result))
                else:
                    reply = _frame((call_id, OBJECT, pickle.dumps(result)))
            except Exception as exc:
                reply = _frame((call_id, ERROR, f"{type(exc).__name__}: {exc}"))
            if not writer.is_closing():
                writer.write(reply)
                # A client that does not read keeps this call (and its slot) here;
                # with nothing left in the buffer (the usual case) drain() is not needed.
                if writer.transport.get_write_buffer_size():
                    with contextlib.suppress(OSError):  # the client went: nobody to answer
                        await writer.drain()
        finally:
            self.in_flight -= 1
            slots.release()


class WireLink:
    """A replica's connection to one shard's socket; calls multiplexed by id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.broken = False
        self.calls = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._connecting: asyncio.Lock | None = None

    async def call(self, method: str, args: tuple) -> Any:
        """``method(*args)`` on the shard: its bytes, or the refusal object it returned."""
        if self.broken:
            raise WireBroken(f"{self.path}: closed")
        writer = self._writer or await self._connect()
        if self.broken:  # closed while we waited to connect: nothing was sent
            raise WireBroken(f"{self.path}: closed")
        self._next_id += 1
        call_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            writer.write(_frame((call_id, method, list(args))))
            try:
                kind, payload = await future
            except WireBroken as exc:  # sent: the shard may have run it (see RETRY_SAFE)
                raise WireReplyLost(f"{exc} (after the call was sent)") from None
        finally:
            self._pending.pop(call_id, None)
        self.calls += 1
        if kind == BYTES:
            return payload
        if kind == OBJECT:
            return pickle.loads(payload)
        raise WireCallFailed(payload)

    async def _connect(self) -> asyncio.StreamWriter:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.broken:
                raise WireBroken(f"{self.path}: closed")
            if self._writer is None:
                try:
                    reader, self._writer = await asyncio.open_unix_connection(self.path)
                except OSError as exc:
                    self.broken = True
                    raise WireBroken(f"{self.path}: {exc}") from None
                self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = WireBroken(f"{self.path}: closed by the shard")
        try:
            while True:
                call_id, kind, payload = _reply.decode(await _read_frame(reader))
                future = self._pending.get(call_id)
                if future is not None and not future.done():
                    future.set_result((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError) as exc:
            error = WireBroken(f"{self.path}: {type(exc).__name__}")
        finally:
            self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        """Stop using the connection; calls still waiting fail with ``WireReplyLost``."""
        self.broken = True
        if self._writer is not None:
            self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error or WireBroken(f"{self.path}: closed"))
        self._pending.clear()
        task, self._reader_task = self._reader_task, None
        if task is not None and not task.done():
            try:
                if task is asyncio.current_task():
                    return
            except RuntimeError:  # the loop is gone (shut down with the link open)
                return
            task.cancel()
