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
