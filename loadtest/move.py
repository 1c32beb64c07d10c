"""How long a live move of N profiles takes, and decide latency while it runs.

Talks to a running server over HTTP only (start one with two shards, e.g.
``rtim serve --shards 2 --partitions 64 --data-dir /tmp/move-bench``):

1. move every partition to shard 1 (the server is empty: instant);
2. load ``--profiles`` profiles (one event each, batches of 1,000, with progress);
3. while one client decides in a closed loop, move every partition to shard 0
   (``POST /v1/admin/moves``: hand-offs of ``move_partitions`` partitions,
   one at a time) and wait for the job to finish;
4. check every sampled profile reads back, and write the figures as JSON.

With ``--identity`` it moves identity partitions instead: it loads
``--profiles`` logins (a cookie and an account each: two identifier links),
and while the identity partitions move, one closed-loop client sends page
views with new cookies (each must be resolved on the identity shards, no
cache hit); afterwards every sampled cookie must still name its account.

    python -m loadtest.move --url http://127.0.0.1:8000 --profiles 100000 \\
        --out var/bench/move.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx


def run_job(
    c: httpx.Client, partitions: list[int], to: int, identity: bool = False
) -> dict[str, Any]:
    r = c.post("/v1/admin/moves", json={"partitions": partitions, "to": to, "identity": identity})
    r.raise_for_status()
    while True:
        p = c.get("/v1/admin/rebalance").json()
        if not p["running"]:
            if p["error"]:
                raise SystemExit(f"move stalled: {p['error']}")
            return p
        time.sleep(0.2)


class Decider(threading.Thread):
    """One closed-loop client deciding for loaded customers; latencies in ms."""

    def __init__(self, url: str, customers: list[str], identity: bool = False) -> None:
        super().__init__(daemon=True)
        self.url, self.customers, self.identity = url, customers, identity
        self.latencies: list[float] = []
        self.fallbacks = self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            i = 0
            while not self.stop.is_set():
                started = time.perf_counter()
                if self.identity:  # a new visitor: resolved on the identity shards
                    ids = {"cookie": uuid.uuid4().hex}
                    event = {"event_id": uuid.uuid4().hex, "type": "page_view", "identifiers": ids}
                    r = c.post("/v1/events", json={"events": [event]})
                else:
                    r = c.post(
                        "/v1/decide", json={"customer_id": self.customers[i], "channel": "web"}
                    )
                self.latencies.append((time.perf_counter() - started) * 1000)
                if r.status_code != 200:
                    self.errors += 1
                elif not self.identity and r.json().get("fallback"):
                    self.fallbacks += 1
                i = (i + 7919) % len(self.customers)


def _loading_event(cid: str, identity: bool) -> dict[str, Any]:
    """A page view of ``cid``; with ``identity`` a login naming its cookie and account."""
    if identity:
        ids = {"cookie": f"ck-{cid}", "account": cid}
        return {"event_id": uuid.uuid4().hex, "type": "identify", "identifiers": ids}
    return {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}


def _readable(c: httpx.Client, cid: str, identity: bool) -> bool:
    if identity:
        r = c.get("/v1/profiles", params={"cookie": f"ck-{cid}"})
        return r.status_code == 200 and r.json()["customer_id"] == cid
    return c.get(f"/v1/profiles/{cid}").status_code == 200


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument("--out", default="var/bench/move.json")
    ap.add_argument("--identity", action="store_true", help="move identity partitions")
    args = ap.parse_args()
    ident = args.identity
    with httpx.Client(base_url=args.url, timeout=120) as c:
        pmap = c.get("/v1/admin/rebalance").json()["identity_map" if ident else "map"]
        everything = list(range(len(pmap["owners"])))
        run_job(c, everything, 1, ident)
        customers = [f"mv-{uuid.uuid4().hex[:12]}" for _ in range(args.profiles)]
        started = time.monotonic()
        for i in range(0, len(customers), 1000):
            events = [_loading_event(cid, ident) for cid in customers[i : i + 1000]]
            c.post("/v1/events", json={"events": events}).raise_for_status()
            if i % 20_000 == 0:
                print(f"loaded {i + len(events)}/{len(customers)} profiles", flush=True)
        load_s = time.monotonic() - started

        decider = Decider(args.url, customers, ident)
        decider.start()
        time.sleep(3.0)
        before = list(decider.latencies)
        started = time.monotonic()
        print(f"moving {len(customers)} profiles to shard 0 ...", flush=True)
        job = run_job(c, everything, 0, ident)
        move_s = time.monotonic() - started
        during = decider.latencies[len(before) :]
        decider.stop.set()
        decider.join(timeout=60)
        missing = [cid for cid in customers[::100] if not _readable(c, cid, ident)]
        shards = c.get("/v1/admin/shards").json()["identity_shards" if ident else "shards"]
    result = {
        "moved": "identity links (2 per profile)" if ident else "profiles",
        "profiles": len(customers),
        "load_seconds": round(load_s, 1),
        "move_seconds": round(move_s, 2),
        "profiles_per_second": round(len(customers) / move_s),
        "hand_offs": job["moves_done"],
        "slowest_hand_off_s": max(m["seconds"] for m in job["last_moves"]),
        "export_bytes": sum(m["bytes"] for m in job["last_moves"]),
        "decide_ms_before": {"p50": percentile(before, 0.5), "p99": percentile(before, 0.99)},
        "decide_ms_during": {
            "p50": percentile(during, 0.5),
            "p99": percentile(during, 0.99),
            "max": percentile(during, 1.0),
            "mean": round(statistics.fmean(during), 2) if during else 0.0,
            "count": len(during),
        },
        "decide_fallbacks": decider.fallbacks,
        "decide_errors": decider.errors,  # with --identity: page views of new visitors
        "sampled_profiles_missing": len(missing),
        "per_shard": [s["identifiers" if ident else "profiles"] for s in shards],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
