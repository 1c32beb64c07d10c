"""Closed-loop load at a fixed concurrency, with every latency recorded.

``concurrency`` workers each hold one keep-alive connection and send their
next request as soon as the previous answer is in, for ``duration_s``
seconds after a short warm-up. Throughput is what the server gives at that
concurrency; every answered request's latency is recorded with
:func:`time.perf_counter`. Non-200 answers and transport errors are counted
(with a few sample bodies) and never mixed into the latencies.

Two clients are available: ``raw`` (:mod:`loadtest.http11`, the cheapest)
and ``aiohttp`` (for comparison, see ``bench --client-cost``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from loadtest.http11 import API_KEY_ENV, KeepAliveConnection, Request, auth_line, encode_request

CLIENTS = ("raw", "aiohttp")
MAX_ERROR_SAMPLES = 3


class Client(Protocol):
    """One worker's connection to the server."""

    async def send(self, req: Request) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class RawClient:
    """:class:`KeepAliveConnection`, reopened after a failure."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.host_header = f"{host}:{port}"
        self.auth = auth_line()
        self.conn: KeepAliveConnection | None = None

    async def send(self, req: Request) -> tuple[int, bytes]:
        if self.conn is None or not self.conn.usable:
            if self.conn is not None:
                self.conn.close()
            self.conn = await KeepAliveConnection.open(self.host, self.port)
        return await self.conn.send(
            encode_request(req, self.host_header, self.auth), self.timeout_s
        )

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class AiohttpClient:
    """aiohttp with its own keep-alive pool (one session per worker)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        import aiohttp

        self.base = f"http://{host}:{port}"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            skip_auto_headers=("User-Agent",),
        )
        self.headers = {"Content-Type": "application/json"}
        if key := os.environ.get(API_KEY_ENV):
            self.headers["Authorization"] = f"Bearer {key}"

    async def send(self, req: Request) -> tuple[int, bytes]:
        async with self.session.request(
            req.method, self.base + req.path, data=req.body or None, headers=self.headers
        ) as resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        await self.session.close()


def make_client(kind: str, host: str, port: int, timeout_s: float = 30.0) -> Client:
    if kind == "raw":
        return RawClient(host, port, timeout_s)
    if kind == "aiohttp":
        return AiohttpClient(host, port, timeout_s)
    raise ValueError(f"client must be one of {CLIENTS}, got {kind!r}")


@dataclass
class PhaseResult:
    """One measured phase: latencies of the 200s, everything else counted."""

    name: str
    concurrency: int
    items_per_request: int = 1
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # non-200 status -> count
    exceptions: Counter = field(default_factory=Counter)  # exception type -> count
    error_samples: list[str] = field(default_factory=list)
    flagged: int = 0  # 200s whose body held the phase's flag (e.g. a fallback answer)
    counted: int = 0  # occurrences of the phase's ``count`` bytes in 200 bodies
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) * 1000.0
        pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
        return {
            "rps": round(self.rps, 1),
            "items_per_s": round(self.rps * self.items_per_request, 1),
            "p50_ms": round(float(pct[0]), 3),
            "p95_ms": round(float(pct[1]), 3),
            "p99_ms": round(float(pct[2]), 3),
            "mean_ms": round(float(lat.mean()), 3) if len(lat) else float("nan"),
            "max_ms": round(float(lat.max()), 3) if len(lat) else float("nan"),
            "requests": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "exceptions": dict(self.exceptions),
            "error_samples": self.error_samples,
            "flagged": self.flagged,
            "flagged_rate": round(self.flagged / self.ok, 4) if self.ok else 0.0,
            "counted": self.counted,
            # Per item answered: e.g. the share of decisions that sent no offer.
            "counted_share": (
                round(self.counted / (self.ok * self.items_per_request), 4) if self.ok else 0.0
            ),
            "unflagged_rps": round((self.ok - self.flagged) / self.elapsed_s, 1)
            if self.elapsed_s > 0
            else 0.0,
            "elapsed_s": round(self.elapsed_s, 3),
            "client_cpu_us_per_request": (
                round(self.client_cpu_s / self.ok * 1e6, 1) if self.ok else None
            ),
        }


async def run_phase(
    name: str,
    host: str,
    port: int,
    make_request: Callable[[], Request],
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 0.5,
    client: str = "raw",
    items_per_request: int = 1,
    flag: bytes | None = None,
    count: bytes | None = None,
    max_requests: int = 5_000_000,
    timeout_s: float = 30.0,
) -> PhaseResult:
    """Run ``concurrency`` closed-loop workers; measure after ``warmup_s``.

    ``flag``: count the 200s whose body holds it; ``count``: count how often
    it occurs in 200 bodies (several answers per batch response).
    """
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency must be >= 1 and duration_s > 0")
    result = PhaseResult(name, concurrency, items_per_request)
    lat = result.latencies_s
    issued = 0
    last_done = 0.0
    t_start = time.perf_counter() + warmup_s
    t_end = t_start + duration_s
    perf = time.perf_counter

    def record_error(status: int | None, detail: str) -> None:
        if status is None:
            result.exceptions[detail.split(":", 1)[0]] += 1
        else:
            result.statuses[status] += 1
        if len(result.error_samples) < MAX_ERROR_SAMPLES:
            result.error_samples.append(detail[:300])

    async def worker() -> None:
        nonlocal issued, last_done
        c = make_client(client, host, port, timeout_s)
        try:
            while issued < max_requests:
                t0 = perf()
                if t0 >= t_end:
                    break
                issued += 1
                try:
                    status, body = await c.send(make_request())
                except Exception as exc:
                    if perf() >= t_start:
                        record_error(None, f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)  # a refused connection must not spin
                    continue
                t1 = perf()
                if t0 < t_start:
                    continue  # warm-up
                last_done = t1
                if status == 200:
                    lat.append(t1 - t0)
                    if flag is not None and flag in body:
                        result.flagged += 1
                    if count is not None:
                        result.counted += body.count(count)
                else:
                    record_error(status, f"HTTP {status}: {body[:200].decode(errors='replace')}")
        finally:
            await c.close()

    cpu_at_start: list[float] = []
    loop = asyncio.get_running_loop()
    loop.call_later(warmup_s, lambda: cpu_at_start.append(time.process_time()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.client_cpu_s = time.process_time() - (cpu_at_start or [time.process_time()])[0]
    result.elapsed_s = last_done - t_start if last_done > t_start else duration_s
    return result
