"""Run the real server (``rtim serve``, as ``make serve`` does) as a child process.

The benchmark starts the server the way a user does, on a free loopback port
with a fresh data directory, and stops it with Ctrl-C (SIGINT) so
``rtim serve`` shuts Ray down itself. The child leads its own session. Every
Ray process it starts stays in that session (Ray's workers get process groups
of their own, but not sessions), so the session id finds them all: to read
their CPU time per phase and, should a graceful stop fail, to end them.

``rtim serve`` gives its HAProxy private ports and files itself
(``serving.server``), so a benchmark never collides with another server on
the same machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerStartError(RuntimeError):
    """The server did not become ready; the message holds the log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``rtim serve`` child."""

    url: str
    host: str
    port: int
    ingress_mode: str
    fsync: str | None
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    started_in_s: float

    @property
    def sid(self) -> int:
        return self.proc.pid  # the child leads its own session

    @property
    def api_key(self) -> str:
        """The admin key ``rtim serve`` made on first start in its data directory."""
        return (self.data_dir / "admin.key").read_text().strip()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _rtim_command() -> list[str]:
    script = Path(sys.executable).parent / "rtim"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "serving.cli"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark dies without stopping us."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_json(url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    """GET ``url``; (status, decoded JSON or None)."""
    key = os.environ.get("RTIM_API_KEY")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def start_server(
    run_dir: Path,
    *,
    ingress_mode: str = "proxy",
    fsync: str | None = None,
    shards: int | None = None,
    host: str = "127.0.0.1",
    ready_timeout_s: float = 240.0,
) -> ServerProcess:
    """Start ``rtim serve`` and wait until ``/readyz`` says ready."""
    port = free_port(host)
    data_dir = run_dir / "data"
    log_path = run_dir / "server.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*_rtim_command(), "serve", "--host", host, "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--ingress-mode", ingress_mode]
    if shards:
        cmd += ["--shards", str(shards)]
    if fsync:
        cmd += ["--fsync", fsync]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = ServerProcess(
        f"http://{host}:{port}",
        host,
        port,
        ingress_mode,
        fsync,
        data_dir,
        log_path,
        proc,
        0.0,
    )
    try:
        _wait_ready(server, started + ready_timeout_s)
    except BaseException:
        stop_server(server)
        raise
    server.started_in_s = time.monotonic() - started
    return server


def _wait_ready(server: ServerProcess, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(
                f"rtim serve exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        # Not up yet, or (rarely) another process's non-HTTP service on the
        # port before ours binds it: keep polling until ready, exited or late.
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = http_json(server.url + "/readyz", timeout_s=2.0)
            if status == 200 and isinstance(body, dict) and body.get("status") == "ready":
                return
        time.sleep(0.5)
    raise ServerStartError(f"server not ready at {server.url}:\n{server.log_tail()}")


def stop_server(server: ServerProcess, timeout_s: float = 60.0) -> None:
    """Ctrl-C the server and wait; end its session's processes if that does not work."""
    proc, sid = server.proc, server.sid
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        # Ray's helpers leave on their own shortly after the driver exits.
        deadline = time.monotonic() + 15.0
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        for pid in session_pids(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def running_server(run_dir: Path, **kwargs: Any) -> Iterator[ServerProcess]:
    """:func:`start_server`, stopped on the way out (errors and Ctrl-C included)."""
    server = start_server(run_dir, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)


# -- process accounting ---------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(session id, CPU seconds) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    # After the command name: state ppid pgrp session ... utime(12th) stime(13th)
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies included until reaped)."""
    return [pid for pid in _pids() if (st := _stat(pid)) is not None and st[0] == sid]


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split(".")[0]  # ray::ServeReplica:rtim:Ingress, ray::ProfileShard
    if len(argv) > 1 and "python" in Path(first).name:
        first = next((a.decode() for a in argv[1:] if a and not a.startswith(b"-")), first)
    return Path(first).name


def session_cpu(sid: int) -> Counter:
    """CPU seconds used so far by each process of session ``sid``, keyed by process name."""
    out: Counter = Counter()
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] == sid:
            out[_name(pid)] += st[1]
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc, or None if it is not readable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
