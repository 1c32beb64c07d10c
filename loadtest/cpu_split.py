"""Where a request's CPU goes, per server process, for settings side by side.

``python -m loadtest.cpu_split --variant wire=RTIM_SHARD_WIRE=true
--variant ray=RTIM_SHARD_WIRE=false`` starts one server per variant (the
environment given; in turns, ``--rounds`` times, so a noisy machine hits
every variant alike), preloads profiles, runs ``wrk`` on ``/noop`` and on
``/v1/decide`` and divides each server process's CPU seconds in that phase
(``/proc``, every process of the server's session) by the requests answered.
CPU per request is far less sensitive to other load on the machine than
req/s or latency, which is why this is the figure to compare variants by.

Writes ``var/bench/cpu_split.json`` and prints the medians per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

from loadtest import launcher
from loadtest.wrkload import ensure_wrk, run_wrk

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "bench" / "cpu_split.json"
GROUPS = {
    "ray::ServeReplica": "ingress replicas",
    "ray::ProfileShard": "profile shards",
    "haproxy": "HAProxy",
}


def group(process: str) -> str:
    return next((g for p, g in GROUPS.items() if process.startswith(p)), "Ray and the rest")


def one_server(name: str, env: dict[str, str], profiles: int, seconds: float) -> list[dict]:
    run_dir = ROOT / "var" / "bench" / f"cpu-split-{name}-{int(time.time())}"
    # The server inherits our environment at start-up; patch.dict puts it back after.
    with (
        mock.patch.dict(os.environ, env),
        launcher.running_server(run_dir, ingress_mode="haproxy") as srv,
    ):
        os.environ["RTIM_API_KEY"] = srv.api_key
        subprocess.run(
            [sys.executable, "-m", "loadtest.bench", "--url", srv.url, "--preload-only",
             "--profiles", str(profiles)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        rows = []
        for path in ("/noop", "/v1/decide"):
            before = launcher.session_cpu(srv.sid)
            r = run_wrk(srv.url, path, 16, seconds, api_key=srv.api_key, customers=profiles)
            spent = launcher.session_cpu(srv.sid) - before
            by_group: Counter = Counter()
            for process, cpu_s in spent.items():
                by_group[group(process)] += cpu_s
            n = max(r["requests"], 1)
            rows.append({
                "variant": name, "path": path, "rps": r["rps"],
                "fallback_share": r.get("fallback_share"), "p99_ms": r.get("p99_ms"),
                "us_per_request": {g: round(1e6 * s / n) for g, s in by_group.items()},
                "total_us_per_request": round(1e6 * sum(by_group.values()) / n),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        return rows


def summary(rows: list[dict]) -> dict[str, Any]:
    """Median µs per request per variant, path and process group."""
    cells: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for r in rows:
        for g, us in {**r["us_per_request"], "whole server": r["total_us_per_request"]}.items():
            cells[(r["variant"], r["path"], g)].append(us)
    out: dict[str, Any] = {}
    for (variant, path, g), values in sorted(cells.items()):
        out.setdefault(variant, {}).setdefault(path, {})[g] = statistics.median(values)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=VAR=VALUE[,VAR=VALUE]: a server environment to compare")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="servers per variant, in turns")
    p.add_argument("--profiles", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=8.0, help="per wrk phase")
    args = p.parse_args(argv)
    ensure_wrk()
    variants = []
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        variants.append((name, env))
    rows: list[dict] = []
    for i in range(args.rounds):
        for name, env in variants:
            print(f"-- round {i + 1}/{args.rounds}: {name} {env}", file=sys.stderr, flush=True)
            rows.extend(one_server(name, env, args.profiles, args.seconds))
    result = {"rows": rows, "median_us_per_request": summary(rows)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_us_per_request"], indent=1))


if __name__ == "__main__":
    main()
