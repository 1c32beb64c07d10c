"""The rewrite of Serve's HAProxy configuration (serving/haproxy_edge.py), checked by HAProxy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from serving import haproxy_edge
from serving.server import _real_haproxy

# Serve's template as it looks with two replicas (trimmed to what the rewrite reads).
TEMPLATE = """global
    log 127.0.0.1:514 local0 info
    maxconn 4096
    nbthread 4
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    log global
    option httplog
    errorfile 502 /dev/null
    errorfile 503 /dev/null
    errorfile 504 /dev/null
    balance leastconn
frontend http_frontend
    bind 127.0.0.1:{front}
    acl is_http-rtim path_beg /
    use_backend http-rtim if is_http-rtim
backend http-rtim
    log global
    http-reuse always
    server SERVE_REPLICA_rtim-Ingress-a 127.0.0.1:40001 check
    server SERVE_REPLICA_rtim-Ingress-b 127.0.0.1:40002 check
listen stats
  bind *:{stats}
  stats enable
"""


def rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for k, v in {"RTIM_EDGE_DECIDE_MAXCONN": "32", "RTIM_EDGE_DECIDE_QUEUE_MS": "25",
                 "RTIM_EDGE_DECIDE_HOLD_MS": "50", **env}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    config = haproxy_edge.rewrite(TEMPLATE.format(front=18001, stats=18002), tmp_path)
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run([_real_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # HAProxy itself accepts it
    return config


def test_decides_queue_one_round_and_the_rest_are_refused_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = rewritten(tmp_path, monkeypatch)
    backend = config.split(f"backend {haproxy_edge.DECIDE_BACKEND}\n")[1].split("\nlisten")[0]
    assert backend.count(" maxconn 32") == 2  # each replica
    assert "timeout queue 25ms" in backend and "timeout tarpit 50ms" in backend
    # One round = 32 x 2 replicas waiting; a decide arriving then is refused, held.
    assert f"tarpit deny_status 503 if {{ queue({haproxy_edge.DECIDE_BACKEND}) ge 64 }}" in backend


def test_no_request_log_without_serves_metrics_and_no_more_threads_than_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(haproxy_edge.os, "cpu_count", lambda: 2)
    off = rewritten(tmp_path, monkeypatch, RAY_SERVE_HAPROXY_METRICS_ENABLED="0")
    assert "option httplog" not in off and "\n    no log\n" in off
    assert "nbthread 2\n" in off
    on = rewritten(tmp_path, monkeypatch, RAY_SERVE_HAPROXY_METRICS_ENABLED="1")
    assert "option httplog" in on  # Serve's metrics read that log
