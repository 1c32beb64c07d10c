#!/usr/bin/env python3
"""What the embedded server's HAProxy answers where Ray Serve's template would not suit us.

Ray Serve writes HAProxy's configuration from its own template and (re)starts
HAProxy with ``haproxy -db -f <cfg> [-sf <pids>]`` on every change. The
embedded server (``rtim serve`` without ``--address``) points
``RAY_SERVE_HAPROXY_BINARY_PATH`` at a small wrapper that runs this file on
the configuration, then executes the real HAProxy. It changes three things:

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

# Serve's "no route" answer in its default backend (the only backend at start-up).
_NO_ROUTE = re.compile(r"^(\s*)http-request return status 404 content-type text/plain .*$", re.M)
_ERRORFILE = re.compile(r"^(\s*)errorfile (50[234]) \S+$", re.M)
_STATS_BIND = re.compile(r"^(\s*)bind \*:(\d+)\s*$", re.M)
_METRICS_BIND = re.compile(r"^(\s*)bind :(\d+)\s*$", re.M)
_DEFAULTS = re.compile(r"^defaults\n(\s+)mode http\n", re.M)


def error_body(status: int) -> bytes:
    code, message = _REASONS[status]
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


def error_file(status: int) -> bytes:
    """A raw HTTP response for HAProxy's ``errorfile``."""
    body = error_body(status)
    head = (
        f"HTTP/1.1 {status} {_REASONS[status][0].replace('_', ' ').title()}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        + (f"retry-after: {RETRY_AFTER_S}\r\n" if status == 503 else "")
        + "cache-control: no-store\r\n"
        "connection: close\r\n\r\n"
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
    config = _STATS_BIND.sub(lambda m: f"{m.group(1)}bind 127.0.0.1:{m.group(2)}", config)
    return _METRICS_BIND.sub(lambda m: f"{m.group(1)}bind 127.0.0.1:{m.group(2)}", config)


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
