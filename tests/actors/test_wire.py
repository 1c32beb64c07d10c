"""The shard wire (``actors/wire.py``) on a real Unix socket: multiplexing, refusals, breaks."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from actors.replies import StaleEpoch
from actors.wire import WireBroken, WireCallFailed, WireLink, WireServer, _frame, socket_dir


class Shard:
    """A stand-in shard: answers out of order, refuses, fails, waits on a gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.seen: list[bytes] = []

    async def decide_packed(self, blob: bytes, deadlines: list | None, epoch: int) -> object:
        self.seen.append(blob)
        if epoch < 5:
            return StaleEpoch(5)
        if blob == b"boom":
            raise ValueError("a bug")
        if blob == b"slow":
            await self.gate.wait()
        return blob + b"!"


async def serve(name: str) -> tuple[Shard, WireServer, WireLink]:
    shard = Shard()
    server = WireServer(f"test-{name}-{os.getpid()}", {"decide_packed": shard.decide_packed})
    return shard, server, WireLink(await server.start())


async def test_calls_are_answered_by_id_even_out_of_order() -> None:
    shard, server, link = await serve("order")
    try:
        shard.gate.clear()
        slow = asyncio.create_task(link.call("decide_packed", (b"slow", None, 7)))
        fast = [link.call("decide_packed", (bytes([i]), [1.5], 7)) for i in range(50)]
        assert await asyncio.gather(*fast) == [bytes([i]) + b"!" for i in range(50)]
        assert not slow.done()  # the slow call did not hold the others back
        shard.gate.set()
        assert await slow == b"slow!"
        assert server.calls == 51 and link.calls == 51
    finally:
        link.close()
        server.close()


async def test_refusals_come_back_as_the_objects_and_failures_as_errors() -> None:
    _, server, link = await serve("refuse")
    try:
        assert await link.call("decide_packed", (b"x", None, 1)) == StaleEpoch(5)
        with pytest.raises(WireCallFailed, match="ValueError: a bug"):
            await link.call("decide_packed", (b"boom", None, 7))
        with pytest.raises(WireCallFailed, match="not served"):
            await link.call("erase", ("someone",))
        assert await link.call("decide_packed", (b"y", None, 7)) == b"y!"  # still usable
    finally:
        link.close()
        server.close()


SERVER_PROCESS = """
import asyncio, sys
from actors.wire import WireServer

async def never(*args):
    await asyncio.Event().wait()

async def main():
    server = WireServer(sys.argv[1], {"decide_packed": never})
    print(await server.start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_shard_process_killed_mid_call_fails_its_waiting_calls_at_once() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER_PROCESS, f"test-killed-{os.getpid()}",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        path = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        link = WireLink(path)
        waiting = [asyncio.create_task(link.call("decide_packed", (b"x", None, 7)))
                   for _ in range(3)]  # fmt: skip
        await asyncio.sleep(0.1)
        assert not any(w.done() for w in waiting)
        proc.kill()  # kill -9 while the calls wait
        for w in waiting:
            with pytest.raises(WireBroken):
                await asyncio.wait_for(w, 5)
        with pytest.raises(WireBroken):  # and later calls are refused at once, not hung
            await asyncio.wait_for(link.call("decide_packed", (b"x", None, 7)), 1)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for left in socket_dir().glob(f"test-killed-{os.getpid()}-*.sock"):
            left.unlink()  # a killed process leaves its socket (a shard's is removed on restart)


async def test_a_missing_socket_is_a_broken_link_and_the_socket_is_private() -> None:
    _, server, link = await serve("private")
    try:
        mode = os.stat(server.path).st_mode
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(server.path).parent).st_mode) == 0o700
    finally:
        link.close()
        server.close()
    with pytest.raises(WireBroken):
        await WireLink(server.path).call("decide_packed", (b"x", None, 7))


async def test_garbage_on_the_socket_drops_that_connection_only() -> None:
    _, server, link = await serve("garbage")
    try:
        reader, writer = await asyncio.open_unix_connection(server.path)
        writer.write(b"\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1")  # a frame that is not msgpack
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the shard
        writer.close()
        assert await link.call("decide_packed", (b"z", None, 7)) == b"z!"
    finally:
        link.close()
        server.close()


def listening(path: str) -> int:
    """Sockets listening on ``path`` (``/proc/net/unix``; an unlinked path still shows)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    accepting = 0x10000  # __SO_ACCEPTCON
    return sum(1 for ln in lines
               if ln.split()[-1] == path and int(ln.split()[3], 16) & accepting)  # fmt: skip


async def test_callers_starting_the_socket_at_once_get_one_server() -> None:
    # wire_address() is asked by every replica at once after a shard starts:
    # one listening socket, not one per caller (the others leaked).
    name = f"test-once-{os.getpid()}"
    server = WireServer(name, {"decide_packed": Shard().decide_packed})
    try:
        paths = await asyncio.gather(*(server.start() for _ in range(5)))
        assert len(set(paths)) == 1
        assert [p.name for p in socket_dir().glob(f"{name}-*.sock")] == [Path(paths[0]).name]
        assert listening(paths[0]) == 1
        link = WireLink(paths[0])
        assert await link.call("decide_packed", (b"a", None, 7)) == b"a!"
        link.close()
        assert await server.start() == paths[0]  # later callers get the same one
    finally:
        server.close()
    assert listening(paths[0]) == 0
    assert not list(socket_dir().glob(f"{name}-*.sock"))


async def settled(read: object, most_s: float = 3.0) -> None:
    """Wait until ``read()`` stops changing for 0.2 s (at most ``most_s``)."""
    last, since, end = read(), time.monotonic(), time.monotonic() + most_s  # type: ignore[operator]
    while time.monotonic() < end and time.monotonic() - since < 0.2:
        await asyncio.sleep(0.02)
        now = read()  # type: ignore[operator]
        if now != last:
            last, since = now, time.monotonic()


async def test_a_client_that_sends_without_reading_holds_at_most_the_bound_of_calls() -> None:
    bound, reply = 32, b"r" * 32768

    async def answer(blob: bytes, deadlines: list | None, epoch: int) -> bytes:
        return reply

    server = WireServer(f"test-bound-{os.getpid()}", {"decide_packed": answer}, max_calls=bound)
    path = await server.start()
    loop = asyncio.get_running_loop()
    greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    greedy.setblocking(False)
    link = WireLink(path)
    sender: asyncio.Task | None = None
    try:
        await loop.sock_connect(greedy, path)
        padding = b"p" * 1024  # 2 MB of requests: more than the socket buffers hold
        frames = b"".join(_frame((i, "decide_packed", [padding, None, 7])) for i in range(2000))
        sender = asyncio.create_task(loop.sock_sendall(greedy, frames))
        await settled(lambda: server.calls)
        # The replies of the calls started fill the socket and the shard's buffer;
        # then every slot waits for the client to read, and the shard reads no more.
        assert server.in_flight == bound
        # + the replies the socket took before it was full (a unix socket's buffer: its sndbuf)
        taken = 2 * greedy.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // len(reply) + 4
        assert server.calls <= bound + taken, server.calls
        assert not sender.done()  # the client cannot send the rest: nobody reads them
        # Another connection is served meanwhile.
        answers = await asyncio.wait_for(
            asyncio.gather(*(link.call("decide_packed", (b"x", None, 7)) for _ in range(50))), 5
        )
        assert answers == [reply] * 50
    finally:
        if sender is not None:
            sender.cancel()
        greedy.close()
        link.close()
        await asyncio.sleep(0.05)
        server.close()
    await settled(lambda: server.in_flight)
    assert server.in_flight == 0  # the greedy client's calls ended with its connection
