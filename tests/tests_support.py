"""Small helpers shared by test modules (importable as ``tests_support``)."""

from __future__ import annotations

import socket

# The admin key the session fixture creates (tests/conftest.py).
ADMIN_KEY = ""


def auth_headers(secret: str | None = None) -> dict[str, str]:
    """The Authorization header for ``secret`` (default: the suite's admin key)."""
    return {"Authorization": f"Bearer {secret or ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_urls(expect: int = 0, timeout_s: float = 60.0) -> list[str]:
    """Direct URLs of each ingress replica of the server this test process started.

    In HAProxy (direct-ingress) mode every Serve replica also listens on its
    own loopback port; tests use them to address replicas one by one. With
    ``expect``, wait (boundedly) until that many replicas answer: a test may
    have killed one, and Serve replaces it.
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        urls = [u for u in _listening_replicas() if _healthy(httpx, u)]
        if not expect or len(urls) == expect or time.monotonic() > deadline:
            return urls
        time.sleep(0.5)


def haproxy_stats(proxy: str, server: str) -> dict[str, str]:
    """One row of the HAProxy stats (CSV) of the server this test process started."""
    import csv
    import io
    import re
    from pathlib import Path

    import httpx
    import psutil

    configs = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if cmd and Path(cmd[0]).name == "haproxy" and "-f" in cmd:
            configs.append(Path(cmd[cmd.index("-f") + 1]))
    stats = re.search(r"listen stats\n\s*bind [\d.]+:(\d+)", configs[-1].read_text())
    assert stats is not None, "no stats listener in HAProxy's configuration"
    text = httpx.get(f"http://127.0.0.1:{stats.group(1)}/stats;csv", timeout=10.0).text
    for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
        if row["pxname"] == proxy and row["svname"] == server:
            return row
    raise LookupError(f"no HAProxy stats row {proxy}/{server}")


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _listening_replicas() -> list[str]:
    import psutil

    urls = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ServeReplica:rtim:Ingress" not in " ".join(proc.cmdline()):
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == "127.0.0.1":
                    urls.append(f"http://127.0.0.1:{conn.laddr.port}")
        except psutil.Error:
            continue
    return sorted(urls)


def start_cli_server(
    port: int,
    data: object,
    log: object,
    shards: int,
    partitions: int = 32,
    timeout_s: float = 120.0,
    extra_env: dict | None = None,
    auth: bool = False,
) -> object:
    """``rtim serve`` in a subprocess on ``data`` (a Path), ready; its output goes to ``log``."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    root = Path(__file__).resolve().parents[1]
    log_path = Path(str(log))
    env = {
        **os.environ,
        "RTIM_SHARDS": str(shards),
        "RTIM_DATA_DIR": str(data),
        "RTIM_PARTITIONS": str(partitions),
        # Scaling and import tests are not about keys: loopback servers without them
        # (the suite's RTIM_API_KEY belongs to the session server).
        "RTIM_AUTH": "true" if auth else "false",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            if ready and "press Ctrl-C" in log_path.read_text():
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not become ready:\n" + log_path.read_text()[-3000:])


def stop_cli_server(proc: object) -> None:
    """Ctrl-C the server and wait (boundedly) for it to stop."""
    import signal
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("server did not stop on SIGINT") from None


def get_json(client: object, path: str, timeout_s: float = 60.0) -> object:
    """GET ``path`` until it answers 200 (a coordinator or shard may be restarting), boundedly."""
    import time

    import httpx

    assert isinstance(client, httpx.Client)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = client.get(path)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} kept failing")
        time.sleep(0.3)


class Traffic:
    """A client thread sending events and decides for ``customers`` until :meth:`stop`.

    Each event batch is re-sent until acknowledged (as a client should: event
    ids make that safe), at most ``retries`` times; ``sent`` counts the
    acknowledged page views per customer, ``acknowledged`` keeps the events.
    Decides that do not answer 200 are kept in ``decide_failures``.
    """

    def __init__(self, base: str, customers: list[str], retries: int = 100) -> None:
        import threading
        from collections import Counter

        self.base, self.customers, self.retries = base, customers, retries
        self.sent: Counter[str] = Counter()
        self.acknowledged: list[dict] = []
        self.lost: list[str] = []  # batches never acknowledged
        self.resends = self.decides = 0
        self.decide_failures: list[str] = []
        self.event_failures: list[str] = []  # the last refusals of event batches
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        if self._thread.ident is None:  # never started
            return
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the traffic thread did not stop"

    def _run(self) -> None:
        import time
        import uuid

        import httpx

        with httpx.Client(base_url=self.base, timeout=30) as c:
            i = 0
            while not self._stop.is_set():
                cid = self.customers[i % len(self.customers)]
                i += 1
                event = {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}
                for _ in range(self.retries):
                    try:
                        r = c.post("/v1/events", json={"events": [event]})
                        if r.status_code == 200:
                            self.sent[cid] += 1
                            self.acknowledged.append(event)
                            break
                        failure = f"{cid} {r.status_code} {r.text[:200]}"
                    except httpx.HTTPError as exc:
                        failure = f"{cid} {exc!r}"
                    self.event_failures = [*self.event_failures[-9:], failure]
                    self.resends += 1
                    time.sleep(0.2)
                else:
                    self.lost.append(cid)
                try:
                    r = c.post("/v1/decide", json={"customer_id": cid, "channel": "web"})
                    if r.status_code != 200:
                        self.decide_failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.decide_failures.append(repr(exc))
                self.decides += 1
                time.sleep(0.01)


def on_other_shards(settings: object) -> tuple[str, str]:
    """A new (cookie, account) whose profiles and identifiers live on different shards
    of a 2-shard server: a login merges across shards."""
    import uuid

    from models.identity.config import identifier_key, new_profile_id
    from models.partitioning import PartitionMap

    pmap = PartitionMap.initial(settings.partitions, 2)  # type: ignore[attr-defined]
    while True:
        cookie, account = f"ck-{uuid.uuid4().hex[:12]}", f"acct-{uuid.uuid4().hex[:12]}"
        anon = new_profile_id("cookie", cookie)
        if pmap.shard_of(anon) != pmap.shard_of(account) and pmap.shard_of(
            identifier_key("cookie", cookie)
        ) != pmap.shard_of(identifier_key("account", account)):
            return cookie, account


async def kill_shard(index: int, timeout_s: float = 120.0) -> None:
    """kill -9 profile shard ``index`` (Ray restarts it) and wait until the new process
    answers. ``ray.kill`` returns at once: without the wait, the next request may still
    reach the dying process, and the restart lands in whatever runs next."""
    import asyncio
    import time

    import ray

    from actors.shard import NAMESPACE, shard_name

    shard = ray.get_actor(shard_name(index), namespace=NAMESPACE)
    killed = (await shard.ping.remote())["pid"]
    ray.kill(shard, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await asyncio.wait_for(shard.ping.remote(), 5))["pid"] != killed:
                return
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"shard {index} was not back within {timeout_s} s of the kill")
