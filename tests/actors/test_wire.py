"""The shard wire (``actors/wire.py``) on a real Unix socket: multiplexing, refusals, breaks."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from actors.replies import StaleEpoch
from actors.wire import WireBroken, WireCallFailed, WireLink, WireServer, socket_dir


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
