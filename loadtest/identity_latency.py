"""Decide latency by identifiers vs by customer id, side by side in one run.

Starts the server through :func:`serving.server.start` (the ``make serve``
path) on a free loopback port and a temporary data directory, links
``--customers`` accounts to cookies, then sends decides one at a time,
interleaving three kinds so machine noise hits them alike:

- ``customer_id``: the plain id;
- ``cookie_cached``: the cookie, already in the ingress replica's cache;
- ``cookie_cold``: a cookie seen for the first time (identity shard lookup
  and claim of a new anonymous profile).

    python -m loadtest.identity_latency --requests 400 --out var/bench/identity.json
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from models.settings import load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--requests", type=int, default=400, help="per kind")
    ap.add_argument("--out", default="var/bench/identity.json")
    args = ap.parse_args(argv)

    from serving import server

    Path("var").mkdir(exist_ok=True)
    data = tempfile.mkdtemp(prefix="rtim-identity-", dir=Path("var").resolve())
    settings = load_settings(None, {"port": free_port(), "data_dir": data})
    print("starting the server ...", flush=True)
    key_file = server.ensure_local_admin_key(settings)
    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"} if key_file else {}
    runtime = server.start(settings)
    try:
        with httpx.Client(base_url=runtime.url, timeout=30, headers=headers) as c:
            accounts = [f"acct-{i}" for i in range(args.customers)]
            cookies = [f"ck-{uuid.uuid4().hex[:12]}" for _ in accounts]
            events = [
                {"event_id": uuid.uuid4().hex, "type": "identify",
                 "identifiers": {"cookie": ck, "account": a}}
                for a, ck in zip(accounts, cookies)
            ]  # fmt: skip
            for i in range(0, len(events), 100):
                r = c.post("/v1/events", json={"events": events[i : i + 100]})
                r.raise_for_status()
            print(f"linked {len(accounts)} accounts to cookies", flush=True)
            kinds: dict[str, list[float]] = {"customer_id": [], "cookie_cached": [],
                                             "cookie_cold": []}  # fmt: skip
            errors = 0
            for i in range(args.requests):
                k = i % len(accounts)
                bodies = {
                    "customer_id": {"customer_id": accounts[k]},
                    "cookie_cached": {"identifiers": {"cookie": cookies[k]}},
                    "cookie_cold": {"identifiers": {"cookie": f"new-{uuid.uuid4().hex}"}},
                }
                for kind, body in bodies.items():
                    t0 = time.perf_counter()
                    r = c.post("/v1/decide", json={**body, "channel": "web", "deadline_ms": 1000})
                    kinds[kind].append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200 or r.json().get("fallback"):
                        errors += 1
                if (i + 1) % 100 == 0:
                    print(f"  {i + 1}/{args.requests}", flush=True)
    finally:
        server.stop(runtime)
    result = {
        kind: {"p50_ms": statistics.median(v), "p99_ms": pct(v, 0.99), "n": len(v)}
        for kind, v in kinds.items()
    }
    base = result["customer_id"]["p50_ms"]
    result["ratio_p50"] = {k: result[k]["p50_ms"] / base for k in kinds}
    result["errors"] = errors
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for kind in kinds:
        r = result[kind]
        print(f"{kind:<14} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
              f"x{result['ratio_p50'][kind]:.2f}")  # fmt: skip
    print(f"errors/fallbacks: {errors}; written to {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
