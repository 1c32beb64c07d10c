#!/usr/bin/env python3
"""What the embedded server's HAProxy answers where Ray Serve's template would not suit us.

Ray Serve writes HAProxy's configuration from its own template and (re)starts
HAProxy with ``haproxy -db -f <cfg> [-sf <pids>]`` on every change. The
embedded server (``rtim serve`` without ``--address``) points
``RAY_SERVE_HAPROXY_BINARY_PATH`` at a small wrapper that runs this file on
the configuration, then executes the real HAProxy. It changes these things:

- **Start-up.** Until the app's route exists, Serve's template answers
  ``404 text/plain "Path '/' not found"``; while the route has no live replica,
  ``500 Internal Server Error``. Both become our JSON error body with
  ``503`` and ``Retry-After: 1`` (``{"error": {"code": "unavailable", ...}}``).
- **Backend failures** (502/503/504 from HAProxy itself) answer the same JSON
  body with their own status instead of a plain-text 500.
- **Whole requests only.** ``option http-buffer-request`` makes HAProxy wait
  for a request's body (up to ``timeout http-request``, the client timeout)
  before it forwards anything, so a client that sends headers and a
  truncated body holds an HAProxy connection, never one of a replica's
  in-flight slots (about 1,000 such clients used to make every endpoint 503).
- **Arrival time.** The API frontend stamps ``X-Request-Start: t=<epoch ms>``
  (replacing any a client sent), so a decide's deadline counts the time a
  request queued in HAProxy too (``serving/ingress.py`` reads it).
- **Decides queue in HAProxy, not in Python.** ``POST /v1/decide`` goes to
  a backend of its own with the same replicas, each taking at most
  ``RTIM_EDGE_DECIDE_MAXCONN`` decides at once; more wait in HAProxy's
  queue for at most ``RTIM_EDGE_DECIDE_QUEUE_MS`` (half the default decide
  deadline), then get ``503 overloaded`` + ``Retry-After``. Without it a
  replica under 1,000 connections queues hundreds of requests in its own
  event loop, where every one costs a full HTTP turn before it can even be
  shed, and the wait is unbounded (issue 14's overload rows). The replica
  still sheds, to the fallback or a 503, a decide that waited too long in
  the queue (``X-Request-Start``). Other routes are not limited here.
- **The queue holds one round.** While as many decides wait in the queue as
  the replicas hold (``maxconn`` × replicas), a new one is not queued: it
  is refused with the same ``503 overloaded``, held until
  ``RTIM_EDGE_DECIDE_HOLD_MS`` (the default decide deadline) after it
  arrived (HAProxy's ``tarpit``). Answering it at once would let a client
  that asks again straight away (a closed loop, or a retry storm) turn every
  refusal into another request: at 1,200 connections, tens of thousands of
  refusals a second that starve the decisions of CPU.
- **No per-request log, threads no more than CPUs.** Serve's template logs
  every request to a syslog socket that only Serve's HAProxy metrics read;
  with those off (``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``, the embedded
  server's default) the line has no reader, so it is not written. Its
  ``nbthread 4`` becomes at most the number of CPUs: on the 2-core box the
  two changes took HAProxy from 38–39 to 25–28 µs of CPU per request at
  1,200 connections.
- **Own surfaces on loopback.** The stats page (no authentication) and the
  Prometheus exporter bind ``127.0.0.1`` instead of every interface.

This file runs as a script with the standard library only (it starts on each
HAProxy reload, before anything else of ours is importable). A change of the
template that this no longer matches is caught by
``tests/integration/test_startup.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

RETRY_AFTER_S = 1

_REASONS = {
    502: ("bad_gateway", "an ingress replica failed to answer; retry"),
    503: ("unavailable", "the server is starting or has no live ingress replica; retry shortly"),
    504: ("timeout", "an ingress replica did not answer in time; retry"),
}
_OVERLOADED = ("overloaded", "every ingress replica has its most decides in flight; retry")
DECIDE_BACKEND = "rtim-decide"

# Serve's "no route" answer in its default backend (the only backend at start-up).
_NO_ROUTE = re.compile(r"^(\s*)http-request return status 404 content-type text/plain .*$", re.M)
_ERRORFILE = re.compile(r"^(\s*)errorfile (50[234]) \S+$", re.M)
_STATS_BIND = re.compile(r"^(\s*)bind \*:(\d+)\s*$", re.M)
_METRICS_BIND = re.compile(r"^(\s*)bind :(\d+)\s*$", re.M)
_DEFAULTS = re.compile(r"^defaults\n(\s+)mode http\n", re.M)
_API_FRONTEND = re.compile(r"^frontend http_frontend\n(\s+)bind \S+\n", re.M)
_APP_BACKEND = re.compile(r"^backend (http-\S+)\n((?:[ \t]+.*\n?)*)", re.M)
_USE_APP = re.compile(r"^(\s*)use_backend (http-\S+) if ", re.M)
_HTTPLOG = re.compile(r"^(\s*)option httplog\s*$", re.M)
_NBTHREAD = re.compile(r"^(\s*)nbthread (\d+)\s*$", re.M)
_REPLICA = re.compile(r"^(\s*server SERVE_REPLICA\S* \S+.*?)\s*$", re.M)


def error_body(status: int, reason: tuple[str, str] | None = None) -> bytes:
    code, message = reason or _REASONS[status]
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


def error_file(status: int, reason: tuple[str, str] | None = None) -> bytes:
    """A raw HTTP response for HAProxy's ``errorfile``."""
    body = error_body(status, reason)
    title = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        + (f"retry-after: {RETRY_AFTER_S}\r\n" if status == 503 else "")
        + "cache-control: no-store\r\n"
        # The connection stays open for the overloaded answer: a client told to
        # retry should not pay (nor make HAProxy pay) a new TCP handshake for it.
        + ("" if reason == _OVERLOADED else "connection: close\r\n")
        + "\r\n"
    )
    return head.encode() + body


def rewrite(config: str, directory: Path) -> str:
    """Serve's HAProxy configuration with our answers and loopback-only own surfaces.

    Writes the error files it refers to into ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for status in _REASONS:
        path = directory / f"rtim-{status}.http"
        path.write_bytes(error_file(status))
        paths[status] = path
    body = directory / "rtim-503.json"
    body.write_bytes(error_body(503))
    config = _NO_ROUTE.sub(
        lambda m: (
            f"{m.group(1)}http-request return status 503 content-type application/json "
            f'file {body} hdr retry-after {RETRY_AFTER_S} hdr cache-control "no-store"'
        ),
        config,
    )
    config = _ERRORFILE.sub(
        lambda m: f"{m.group(1)}errorfile {m.group(2)} {paths[int(m.group(2))]}", config
    )
    timeout_s = int(float(os.environ.get("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", "30")))
    config = _DEFAULTS.sub(
        lambda m: (
            f"{m.group(0)}{m.group(1)}option http-buffer-request\n"
            f"{m.group(1)}timeout http-request {timeout_s}s\n"
        ),
        config,
        count=1,
    )
    config = _API_FRONTEND.sub(
        lambda m: f"{m.group(0)}{m.group(1)}http-request set-header X-Request-Start t=%Ts%ms\n",
        config,
        count=1,
    )
    config = _STATS_BIND.sub(lambda m: f"{m.group(1)}bind 127.0.0.1:{m.group(2)}", config)
    config = _METRICS_BIND.sub(lambda m: f"{m.group(1)}bind 127.0.0.1:{m.group(2)}", config)
    if os.environ.get("RAY_SERVE_HAPROXY_METRICS_ENABLED") == "0":
        config = _HTTPLOG.sub(lambda m: f"{m.group(1)}no log", config)
    cpus = os.cpu_count() or 1
    config = _NBTHREAD.sub(lambda m: f"{m.group(1)}nbthread {min(int(m.group(2)), cpus)}", config)
    return _decide_backend(config, directory)


def _decide_backend(config: str, directory: Path) -> str:
    """Route ``POST /v1/decide`` to a copy of the app's backend whose replicas take at
    most ``RTIM_EDGE_DECIDE_MAXCONN`` decides each (0: off), queueing one round more
    and refusing the rest (held, see the module docstring)."""
    maxconn = int(os.environ.get("RTIM_EDGE_DECIDE_MAXCONN", "0"))
    queue_ms = int(float(os.environ.get("RTIM_EDGE_DECIDE_QUEUE_MS", "25")))
    hold_ms = int(float(os.environ.get("RTIM_EDGE_DECIDE_HOLD_MS", "50")))
    app = _APP_BACKEND.search(config)
    use = _USE_APP.search(config)
    if maxconn <= 0 or app is None or use is None or not _REPLICA.search(app.group(2)):
        return config  # off, or still starting: nothing to route yet
    overloaded = directory / "rtim-503-overloaded.http"
    overloaded.write_bytes(error_file(503, _OVERLOADED))
    body = _REPLICA.sub(lambda m: f"{m.group(1)} maxconn {maxconn}", app.group(2))
    one_round = maxconn * len(_REPLICA.findall(app.group(2)))
    indent = use.group(1)
    backend = (
        f"backend {DECIDE_BACKEND}\n{body.rstrip()}\n"
        f"{indent}timeout queue {queue_ms}ms\n"
        f"{indent}timeout tarpit {max(hold_ms, 1)}ms\n"
        f"{indent}http-request tarpit deny_status 503 if "
        f"{{ queue({DECIDE_BACKEND}) ge {one_round} }}\n"
        f"{indent}errorfile 503 {overloaded}\n"
    )
    route = (
        f"{indent}acl rtim_decide path /v1/decide\n"
        f"{indent}use_backend {DECIDE_BACKEND} if rtim_decide METH_POST\n"
    )
    config = config[: use.start()] + route + config[use.start() :]
    app = _APP_BACKEND.search(config)
    assert app is not None
    return config[: app.end()].rstrip("\n") + "\n" + backend + config[app.end() :]


def write_wrapper(directory: Path, haproxy: str, python: str = sys.executable) -> Path:
    """An executable that rewrites the configuration, then runs ``haproxy``."""
    wrapper = directory / "haproxy"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{python}" "{Path(__file__).resolve()}" "{haproxy}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def main(argv: list[str]) -> None:
    haproxy, args = argv[0], argv[1:]
    if "-f" in args:
        cfg = Path(args[args.index("-f") + 1])
        if cfg.is_file():
            cfg.write_text(rewrite(cfg.read_text(), cfg.parent))
    os.execv(haproxy, [haproxy, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
