"""Start-up as a client sees it: JSON 503s until ready, and HAProxy's own ports on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from tests_support import free_port, stop_cli_server

ROOT = Path(__file__).resolve().parents[2]


def _answers_until_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> list:
    """Every answer seen while the server starts, polling every 20 ms; ends once ready."""
    seen = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            for method, path in (("POST", "/v1/decide"), ("GET", "/healthz")):
                try:
                    r = client.request(method, url + path, json={"customer_id": "c-1"})
                except httpx.TransportError:
                    continue  # nothing listening yet
                seen.append((path, r.status_code, r.headers.get("content-type", ""),
                             r.headers.get("retry-after"), r.content))  # fmt: skip
                if path == "/healthz" and r.status_code == 200:
                    return seen
            time.sleep(0.02)
    raise AssertionError(f"not ready in {timeout_s}s: {log.read_text()[-2000:]}")


def _listening(root_pid: int, name: str) -> list[tuple[str, int]]:
    """(ip, port) of listening TCP sockets of ``root_pid`` and descendants (named ``name``)."""
    procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    pids = {p.pid for p in procs if p.name() == name}
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def test_a_starting_server_answers_json_503_with_retry_after_never_a_plain_404(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "RTIM_SHARDS": "2", "RTIM_PARTITIONS": "16",
           "RTIM_DATA_DIR": str(tmp_path / "data"), "RTIM_AUTH": "false"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        seen = _answers_until_ready(proc, f"http://127.0.0.1:{port}", log, 180.0)
        not_ready = [s for s in seen if s[1] != 200]
        assert not_ready, "no answer was seen before the app was ready"
        for path, status, ctype, retry, body in not_ready:
            assert ctype.startswith("application/json"), (path, status, ctype, body[:200])
            if status == 503:
                assert retry == "1", (path, body)
                assert b'"code"' in body
            else:  # only the app's own answers once it runs (e.g. 404 unknown customer)
                assert status < 500, (path, status, body)
        assert any(s[1] == 503 for s in not_ready), [s[:3] for s in not_ready[:5]]

        # HAProxy's stats page and Prometheus exporter listen on loopback only.
        bound = _listening(proc.pid, "haproxy")
        assert len(bound) >= 3, bound  # the frontend, stats and metrics
        assert {ip for ip, _ in bound} == {"127.0.0.1"}, bound
    finally:
        stop_cli_server(proc)
