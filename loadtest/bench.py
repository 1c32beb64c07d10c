"""The one-command benchmark: ``make bench`` (``PROFILES=N``, ``QUICK=1``).

In one run on one machine it:

1. times the in-shard decide microbenchmark (:mod:`loadtest.microbench`);
2. starts the real server (``rtim serve``, the ``make serve`` path) on a free
   loopback port with a fresh data directory under ``var/bench/``;
3. preloads N customer profiles through ``POST /v1/events`` (batches of 1000,
   a few concurrent clients) and reads the shard processes' RSS before and after;
4. measures ``GET /noop``, ``POST /v1/decide``, ``POST /v1/events`` (batches of
   100) and ``POST /v1/decide/batch`` (100 customers) at fixed concurrencies,
   each for a fixed time, repeated and interleaved (noop, decide, events,
   batch, noop, ...) so machine noise hits every phase alike; medians reported;
5. stops the server (also on errors and Ctrl-C), prints a table and writes
   ``var/bench/latest.json``.

``--compare-ingress`` runs noop and decide under both ingress modes (two
server starts) and reports which is faster. ``--client-cost`` measures what
each load generator costs in client CPU per request. The load generator is
the raw keep-alive client of :mod:`loadtest.http11`: the client shares the
cores with the server, and it is the cheapest (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest import launcher, report
from loadtest.closedloop import CLIENTS, PhaseResult, RawClient, run_phase
from loadtest.http11 import Request
from loadtest.workload import EventFactory, customer_id, dumps

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
PHASES = ("noop", "decide", "events", "batch_decide")
FALLBACK_FLAG = b'"fallback":true'
NO_MESSAGE = b'"offers":[]'  # a decide answer that sent nothing (JSON without spaces)
PRELOAD_BATCH = 1000


@dataclass(frozen=True)
class Plan:
    """What to run; built from the command line (``--quick`` changes the defaults)."""

    profiles: int
    levels: tuple[int, ...]
    duration_s: float
    repeats: int
    warmup_s: float
    phases: tuple[str, ...]
    event_batch: int
    decide_batch: int
    preload_concurrency: int
    client: str
    seed: int
    external: bool = False  # wrk rows, overload runs and the reference (loadtest.external)
    wrk_levels: tuple[int, ...] = (16, 64)
    overload_levels: tuple[int, ...] = (256, 1200)
    reference_profiles: int = 20_000
    campaign_customers: int = 50_000  # per wave (a third are in the wave's segment)
    campaign_waves: int = 3  # 0: no campaign rows


# -- helpers ----------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed (it is cheaper per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def machine_info(ingress_mode: str, fsync: str, client: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu_model = next(
            (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
        )
    mem_total = None
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as fh:
        mem_total = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1]) * 1024
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": mem_total,
        "load_avg_at_start": load,
        "ray": _version("ray"),
        "locust": _version("locust"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ingress_mode": ingress_mode,
        "fsync": fsync,
        "client": client,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def server_defaults() -> tuple[str, str]:
    """The ingress mode and fsync the server uses when we pass neither."""
    from models.settings import load_settings

    s = load_settings(None)
    return s.ingress_mode, s.fsync


def shard_stats(url: str) -> list[dict[str, Any]]:
    status, body = launcher.http_json(url + "/v1/admin/shards", timeout_s=30.0)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"GET /v1/admin/shards answered {status}: {body}")
    return body["shards"]


def memory_snapshot(url: str) -> dict[str, Any]:
    shards = shard_stats(url)
    rss = [launcher.rss_bytes(s["pid"]) for s in shards]
    return {
        "profiles": sum(s["profiles"] for s in shards),
        "store_bytes": sum(s["memory_bytes"] for s in shards),
        "rss_bytes": sum(r for r in rss if r) if all(rss) else None,
        "shards": [
            {
                "shard": s["shard"],
                "pid": s["pid"],
                "profiles": s["profiles"],
                "rss_bytes": r,
                "memory_bytes": s["memory_bytes"],
            }
            for s, r in zip(shards, rss)
        ],
    }


def memory_report(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    added = after["profiles"] - before["profiles"]
    rss_growth = (
        after["rss_bytes"] - before["rss_bytes"]
        if after["rss_bytes"] is not None and before["rss_bytes"] is not None
        else None
    )

    def per(b: int | None) -> float | None:
        return round(b / added, 1) if added > 0 and b is not None else None

    return {
        "bytes_per_profile": per(rss_growth),  # RSS growth of the shard processes
        "store_bytes_per_profile": per(after["store_bytes"] - before["store_bytes"]),
        "profiles_added": added,
        "rss_growth_bytes": rss_growth,
        "before": before,
        "after": after,
    }


# -- preload ------------------------------------------------------------------------------


def preload_batches(profiles: int, factory: EventFactory) -> Iterator[tuple[int, bytes]]:
    """(customers in the batch, body) with at most PRELOAD_BATCH events each."""
    events: list[dict] = []
    customers = 0
    for i in range(profiles):
        history = factory.profile_history(customer_id(i))
        if events and len(events) + len(history) > PRELOAD_BATCH:
            yield customers, dumps({"events": events})
            events, customers = [], 0
        events.extend(history)
        customers += 1
    if events:
        yield customers, dumps({"events": events})


async def preload(host: str, port: int, plan: Plan) -> dict[str, Any]:
    """POST every preload batch; print progress about once a second."""
    factory = EventFactory(f"pre{int(time.time())}", plan.seed)
    batches = preload_batches(plan.profiles, factory)
    done_customers = done_events = errors = 0
    samples: list[str] = []
    started = time.perf_counter()
    last_print = started

    async def worker() -> None:
        nonlocal done_customers, done_events, errors, last_print
        client = RawClient(host, port, timeout_s=120.0)
        try:
            for customers, body in batches:
                status, answer = await _post_with_retry(client, body)
                if status != 200:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
                    continue
                done_customers += customers
                done_events += json.loads(answer)["accepted"]
                now = time.perf_counter()
                if now - last_print >= 1.0:
                    last_print = now
                    rate = done_events / (now - started)
                    eta = (
                        (plan.profiles - done_customers) / max(done_customers, 1) * (now - started)
                    )
                    say(
                        f"  preload {done_customers:>9,}/{plan.profiles:,} profiles  "
                        f"{rate:>9,.0f} events/s  eta {eta:5.0f}s"
                    )
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(plan.preload_concurrency)))
    elapsed = time.perf_counter() - started
    say(
        f"  preload done: {done_customers:,} profiles, {done_events:,} events in {elapsed:.1f}s "
        f"({done_events / elapsed:,.0f} events/s)"
    )
    return {
        "profiles": done_customers,
        "events": done_events,
        "seconds": round(elapsed, 2),
        "events_per_s": round(done_events / elapsed, 1),
        "batch": PRELOAD_BATCH,
        "concurrency": plan.preload_concurrency,
        "errors": errors,
        "error_samples": samples,
    }


async def _post_with_retry(client: RawClient, body: bytes, tries: int = 3) -> tuple[int, bytes]:
    for attempt in range(tries):
        try:
            return await client.send(Request("POST", "/v1/events", body))
        except (OSError, TimeoutError) as exc:
            if attempt == tries - 1:
                return 599, f"{type(exc).__name__}: {exc}".encode()
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


# -- phases -------------------------------------------------------------------------------


def request_makers(plan: Plan, profiles: int) -> dict[str, tuple[Callable[[], Request], int]]:
    """Per phase: a function giving the next request, and items per request."""
    rng = random.Random(plan.seed)
    n = max(profiles, 1)
    factory = EventFactory(f"ev{int(time.time())}", plan.seed)
    noop = Request("GET", "/noop")

    def decide() -> Request:
        cid = customer_id(rng.randrange(n))
        body = b'{"customer_id":"%s","channel":"web","placement":"home_hero"}' % cid.encode()
        return Request("POST", "/v1/decide", body)

    def events() -> Request:
        batch = [
            factory.random_event(customer_id(rng.randrange(n))) for _ in range(plan.event_batch)
        ]
        return Request("POST", "/v1/events", dumps({"events": batch}))

    def batch_decide() -> Request:
        ids = [customer_id(rng.randrange(n)) for _ in range(plan.decide_batch)]
        body = {"customer_ids": ids, "channel": "web", "placement": "home_hero"}
        return Request("POST", "/v1/decide/batch", dumps(body))

    return {
        "noop": (lambda: noop, 1),
        "decide": (decide, 1),
        "events": (events, plan.event_batch),
        "batch_decide": (batch_decide, plan.decide_batch),
    }


async def measure(
    host: str, port: int, plan: Plan, profiles: int, sid: int | None
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every (phase, level) ``plan.repeats`` times, interleaved; raw per-run summaries."""
    makers = request_makers(plan, profiles)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {p: {} for p in plan.phases}
    total = plan.repeats * len(plan.levels) * len(plan.phases)
    k = 0
    for rep in range(plan.repeats):
        for level in plan.levels:
            for phase in plan.phases:
                k += 1
                make, items = makers[phase]
                before = CpuSnapshot.take(sid)
                res = await run_phase(
                    phase,
                    host,
                    port,
                    make,
                    level,
                    plan.duration_s,
                    warmup_s=plan.warmup_s,
                    client=plan.client,
                    items_per_request=items,
                    flag=FALLBACK_FLAG if phase == "decide" else None,
                    count=NO_MESSAGE if phase in ("decide", "batch_decide") else None,
                )
                summary = res.summary()
                summary.update(CpuSnapshot.take(sid).since(before, res.ok + res.errors))
                runs[phase].setdefault(level, []).append(summary)
                say(_progress_line(k, total, rep, phase, res, summary))
    return runs


@dataclass
class CpuSnapshot:
    """Where the machine's CPU time went: server processes, this client, the rest."""

    wall: float
    server: Counter
    client: float
    machine: float

    @classmethod
    def take(cls, sid: int | None, children: bool = False) -> CpuSnapshot:
        """``children``: the client is this process's finished subprocesses too (a CLI run)."""
        server = launcher.session_cpu(sid) if sid else Counter()
        client = time.process_time()
        if children:
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            client += ru.ru_utime + ru.ru_stime
        return cls(time.monotonic(), server, client, launcher.machine_busy_s())

    def since(self, before: CpuSnapshot, requests: int) -> dict[str, Any]:
        """Server CPU per request (warm-up included) and the share used by other processes."""
        n = max(requests, 1)
        used = {name: self.server[name] - before.server.get(name, 0.0) for name in self.server}
        server = sum(used.values())
        client = self.client - before.client
        capacity = (self.wall - before.wall) * (os.cpu_count() or 1)
        other = max(self.machine - before.machine - server - client, 0.0)
        out: dict[str, Any] = {"other_cpu_pct": round(100.0 * other / capacity, 1)}
        if self.server:
            out["server_cpu_s"] = round(server, 3)
            out["server_cpu_us_per_request"] = round(server / n * 1e6, 1)
            out["server_cpu_by_process"] = {
                name: round(v / n * 1e6, 1) for name, v in used.items() if v > 0.005
            }
        return out


async def idle_cpu(sid: int, seconds: float) -> dict[str, Any]:
    """What the server burns doing nothing (Ray's background work), as a baseline."""
    before = CpuSnapshot.take(sid)
    await asyncio.sleep(seconds)
    after = CpuSnapshot.take(sid)
    used = {n: after.server[n] - before.server.get(n, 0.0) for n in after.server}
    wall = after.wall - before.wall
    return {
        "seconds": round(wall, 2),
        "server_cpu_pct": round(100.0 * sum(used.values()) / wall, 1),
        "by_process_pct": {n: round(100.0 * v / wall, 1) for n, v in used.items() if v > 0.005},
        "other_cpu_pct": after.since(before, 1)["other_cpu_pct"],
    }


def _progress_line(k: int, total: int, rep: int, phase: str, res: PhaseResult, s: dict) -> str:
    extra = f"  {s['items_per_s']:>9,.0f} items/s" if res.items_per_request > 1 else ""
    err = f"  ERRORS {res.errors}: {s['error_samples'][:1]}" if res.errors else ""
    fb = f"  fallbacks {res.flagged}" if res.flagged else ""
    fb += f"  (other processes {s['other_cpu_pct']:.0f}% CPU)" if s["other_cpu_pct"] >= 10 else ""
    return (
        f"  [{k:>2}/{total}] rep {rep + 1} c={res.concurrency:<3} {phase:<13}"
        f"{s['rps']:>9,.0f} req/s{extra}  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms"
        f"{err}{fb}"
    )


def summarise(
    runs: dict[str, dict[int, list[dict[str, Any]]]], levels: tuple[int, ...]
) -> dict[str, Any]:
    headline = max(levels)
    out: dict[str, Any] = {}
    for phase, by_level in runs.items():
        combined = {level: report.combine(rs) for level, rs in by_level.items()}
        out[phase] = report.phase_block(phase, combined, headline)
    if "noop" in out and "decide" in out:
        out["ratio_decide_to_noop"] = _ratio(out["decide"]["rps"], out["noop"]["rps"])
        out["ratio_decided_to_noop"] = _ratio(out["decide"]["decided_rps"], out["noop"]["rps"])
        out["ratio_by_concurrency"] = {
            lv: _ratio(out["decide"]["by_concurrency"][lv]["rps"], nb["rps"])
            for lv, nb in out["noop"]["by_concurrency"].items()
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


# -- client cost ------------------------------------------------------------------------


async def client_cost(host: str, port: int, level: int, duration_s: float) -> dict[str, Any]:
    """Client CPU per request of each in-process client, against /noop."""
    out = {}
    for client in CLIENTS:
        res = await run_phase(
            f"noop/{client}",
            host,
            port,
            lambda: Request("GET", "/noop"),
            level,
            duration_s,
            warmup_s=0.5,
            client=client,
        )
        s = res.summary()
        out[client] = {
            "rps": s["rps"],
            "cpu_us_per_request": s["client_cpu_us_per_request"],
            "p50_ms": s["p50_ms"],
            "errors": s["errors"],
        }
        say(
            f"  client {client:<8} {s['rps']:>8,.0f} req/s  "
            f"{s['client_cpu_us_per_request']} µs client CPU"
        )
    return out


def locust_cost(url: str, level: int, duration_s: float) -> dict[str, Any]:
    """The same for locust's FastHttpUser (a separate gevent process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "cost.json"
        locust = str(Path(sys.executable).parent / "locust")
        cmd = [
            locust,
            "-f",
            str(ROOT / "loadtest" / "locust_noop.py"),
            "--headless",
            "-u",
            str(level),
            "-r",
            str(level),
            "-t",
            f"{duration_s:g}s",
            "--host",
            url,
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        env = {**os.environ, "RTIM_LT_COST_OUT": str(out_file)}
        try:
            subprocess.run(
                cmd,
                env=env,
                timeout=duration_s + 60,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            data = json.loads(out_file.read_text())
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
    res = {
        "rps": round(data["requests"] / data["seconds"], 1),
        "cpu_us_per_request": round(data["cpu_s"] / max(data["requests"], 1) * 1e6, 1),
        "errors": data["failures"],
    }
    say(f"  client locust   {res['rps']:>8,.0f} req/s  {res['cpu_us_per_request']} µs client CPU")
    return res


# -- one server ---------------------------------------------------------------------------


def bench_one_server(
    plan: Plan, mode: str, fsync: str | None, shards: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Start a server, preload, measure, stop it; the results for this server."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = BENCH_DIR / f"run-{stamp}-{mode}"
    say(f"\n== server: ingress {mode}, fsync {fsync or 'default'} ({run_dir.relative_to(ROOT)})")
    try:
        with launcher.running_server(run_dir, ingress_mode=mode, fsync=fsync, shards=shards) as srv:
            say(f"  up at {srv.url} in {srv.started_in_s:.1f}s (pid {srv.proc.pid})")
            # Every client (raw, aiohttp, locust children) sends this key.
            os.environ["RTIM_API_KEY"] = srv.api_key
            out = run_async(_bench_server(srv.host, srv.port, srv.url, srv.sid, plan, args))
            if plan.external:
                from loadtest.external import measure_external

                profiles = out["memory"]["after"]["profiles"] or plan.profiles
                out["external"] = measure_external(
                    srv.url, srv.api_key, srv.sid,
                    profiles=profiles,
                    levels=plan.wrk_levels,
                    overload_levels=plan.overload_levels,
                    duration_s=plan.duration_s,
                    repeats=plan.repeats,
                    reference_profiles=min(plan.reference_profiles, max(profiles, 1)),
                    log_dir=run_dir,
                    say=say,
                )  # fmt: skip
            if plan.campaign_waves > 0:
                out["campaign"] = campaign_rows(srv, plan, run_dir)
            out["server"] = {
                "url": srv.url,
                "started_in_s": round(srv.started_in_s, 1),
                "ingress_mode": mode,
                "fsync": fsync,
                "log": str(srv.log_path),
            }
            say("  stopping the server...")
    finally:
        if not args.keep_data:
            _remove_data(run_dir / "data")
            _remove_data(run_dir / "campaign")
    return out


def campaign_rows(srv: Any, plan: Plan, run_dir: Path) -> dict[str, Any]:
    """``rtim campaign run`` over waves of never-contacted customers (loadtest.campaign_rate).

    The batch decide path with every decision a full one: ``batch_decide``
    above re-decides for the same customers, whom the contact caps soon
    answer with "no message" at a lower cost (its ``no_message_share``).
    """
    from loadtest.campaign_rate import run_waves

    say(
        f"-- campaign: {plan.campaign_waves} wave(s) of {plan.campaign_customers:,} fresh "
        "customers, email and outbound_call (the batch decide path, each customer once)"
    )
    work = run_dir / "campaign"
    work.mkdir(parents=True, exist_ok=True)
    out = run_waves(srv.url, srv.sid, srv.api_key, work, plan.campaign_customers,
                    plan.campaign_waves, say=say)  # fmt: skip
    say(f"  median {out['decisions_per_s_median']:,.0f} decisions/s")
    return out


async def _bench_server(
    host: str, port: int, url: str, sid: int | None, plan: Plan, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    before = memory_snapshot(url)
    if plan.profiles:
        say(f"-- preload: {plan.profiles:,} profiles")
        out["preload"] = await preload(host, port, plan)
    after = memory_snapshot(url)
    out["memory"] = memory_report(before, after)
    m = out["memory"]
    say(
        f"  memory: {_num(m['bytes_per_profile'])} bytes/profile RSS growth, "
        f"{_num(m['store_bytes_per_profile'])} bytes/profile in the store "
        f"({after['profiles']:,} profiles)"
    )
    if sid:
        out["idle"] = await idle_cpu(sid, 1.0 if args.quick else 3.0)
        say(
            f"  idle server: {out['idle']['server_cpu_pct']}% of one core "
            f"(other processes {out['idle']['other_cpu_pct']}% of the machine)"
        )
    if args.client_cost:
        say(f"-- client cost (noop, c={plan.levels[0]}, {plan.duration_s:g}s each)")
        cost = await client_cost(host, port, plan.levels[0], plan.duration_s)
        cost["locust"] = locust_cost(url, plan.levels[0], plan.duration_s)
        out["client_cost"] = cost
    if plan.phases:
        say(
            f"-- phases {', '.join(plan.phases)} at c={list(plan.levels)}, "
            f"{plan.duration_s:g}s each, {plan.repeats} repeat(s)"
        )
        runs = await measure(host, port, plan, after["profiles"] or plan.profiles, sid)
        out.update(summarise(runs, plan.levels))
    return out


def _num(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "n/a"


def _remove_data(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- main -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="small and short: 3,000 profiles, 2 s phases"
    )
    p.add_argument(
        "--profiles", type=int, help="profiles to preload (default 100,000; quick 3,000)"
    )
    p.add_argument("--levels", help="concurrency levels, comma separated (default 8,32; quick 8)")
    p.add_argument("--duration", type=float, help="seconds per phase (default 10; quick 2)")
    p.add_argument("--repeats", type=int, help="repeats of every phase (default 3; quick 1)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each phase (default 1)")
    p.add_argument("--phases", help=f"comma separated, from {','.join(PHASES)} (default all)")
    p.add_argument("--event-batch", type=int, default=100, help="events per POST /v1/events")
    p.add_argument("--decide-batch", type=int, default=100, help="customers per decide/batch")
    p.add_argument("--preload-concurrency", type=int, default=4)
    p.add_argument("--ingress-mode", choices=["proxy", "haproxy"], help="default: the server's")
    p.add_argument("--fsync", choices=["always", "batch", "off"], help="default: the server's")
    p.add_argument("--shards", type=int, help="shard actors (default: the server's, one per CPU)")
    p.add_argument(
        "--compare-ingress",
        action="store_true",
        help="run noop+decide (or --phases) under both ingress modes",
    )
    p.add_argument(
        "--external",
        action=argparse.BooleanOptionalAction,
        help="wrk rows (noop, decide, overload) and the no-Ray reference "
        "(default on; off with --quick)",
    )
    p.add_argument("--wrk-levels", help="wrk connections, comma separated (default 16,64)")
    p.add_argument(
        "--overload-levels", help="wrk overload connections (default 256,1200; quick 256)"
    )
    p.add_argument(
        "--reference-profiles",
        type=int,
        default=20_000,
        help="profiles the reference process holds (at most --profiles)",
    )
    p.add_argument(
        "--campaign-waves",
        type=int,
        help="campaign runs over fresh customers, one wave each (default 3; quick 1; 0: none)",
    )
    p.add_argument(
        "--campaign-customers",
        type=int,
        help="customers imported per campaign wave (default 50000; quick 3000)",
    )
    p.add_argument("--client", choices=CLIENTS, default="raw", help="load generator")
    p.add_argument(
        "--client-cost",
        action="store_true",
        help="also measure client CPU per request: raw, aiohttp, locust",
    )
    p.add_argument("--skip-micro", action="store_true", help="skip the in-shard microbenchmark")
    p.add_argument("--url", help="use this running server instead of starting one")
    p.add_argument(
        "--preload-only",
        action="store_true",
        help="only preload profiles (e.g. with --url, before a locust run)",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the server's data directory")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out",
        help="JSON output (default var/bench/latest.json, "
        "or var/bench/compare-ingress.json with --compare-ingress)",
    )
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    q = args.quick
    phases = (
        tuple(args.phases.split(","))
        if args.phases
        else (("noop", "decide") if args.compare_ingress else PHASES)
    )
    if args.preload_only:
        phases = ()
        args.skip_micro = True
    bad = [ph for ph in phases if ph not in PHASES]
    if bad:
        raise SystemExit(f"bench: unknown phase(s) {bad}; choose from {list(PHASES)}")
    levels = (
        tuple(int(x) for x in args.levels.split(",")) if args.levels else ((8,) if q else (8, 32))
    )
    plan = Plan(
        profiles=args.profiles if args.profiles is not None else (3000 if q else 100_000),
        levels=levels,
        duration_s=args.duration or (2.0 if q else 10.0),
        repeats=args.repeats or (1 if q else 3),
        warmup_s=args.warmup if args.warmup is not None else (0.5 if q else 1.0),
        phases=phases,
        event_batch=args.event_batch,
        decide_batch=args.decide_batch,
        preload_concurrency=args.preload_concurrency,
        client=args.client,
        seed=args.seed,
        external=(not q and not args.compare_ingress and not args.url and bool(phases))
        if args.external is None
        else args.external,
        wrk_levels=_levels(args.wrk_levels, (16,) if q else (16, 64)),
        overload_levels=_levels(args.overload_levels, (256,) if q else (256, 1200)),
        reference_profiles=args.reference_profiles,
        campaign_customers=args.campaign_customers or (3000 if q else 50_000),
        campaign_waves=_campaign_waves(args, phases),
    )
    if plan.profiles < 0 or min(plan.levels) < 1 or plan.repeats < 1:
        raise SystemExit("bench: profiles must be >= 0, levels >= 1, repeats >= 1")
    return plan


def _campaign_waves(args: argparse.Namespace, phases: tuple[str, ...]) -> int:
    if args.url:  # a server the benchmark did not start: no campaign rows (they import)
        return 0
    if args.campaign_waves is not None:
        return args.campaign_waves
    return (1 if args.quick else 3) if "batch_decide" in phases else 0


def _levels(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else default


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the benchmark like Ctrl-C: the server is stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C must stop the run (and the server) even when started from a
    # shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    default_mode, default_fsync = server_defaults()
    mode = args.ingress_mode or default_mode
    fsync = args.fsync or default_fsync
    # A preload alone (before a locust or wrk run) must not replace the last results.
    default_name = "preload.json" if args.preload_only else "latest.json"
    out_path = (
        Path(args.out)
        if args.out
        else BENCH_DIR / ("compare-ingress.json" if args.compare_ingress else default_name)
    )
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "schema": "rtim-bench/1",
        "started_at": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "profiles": plan.profiles,
        "machine": machine_info(mode if not args.url else "unknown", fsync, plan.client),
        "plan": dataclasses.asdict(plan),
    }
    try:
        if not args.skip_micro:
            say("-- in-shard decide microbenchmark (no Ray, no HTTP)")
            from loadtest import microbench

            micro = microbench.run(300 if args.quick else 3000, 5 if args.quick else 30)
            results["micro"] = micro
            say(
                f"  decide {micro['demo']['median_us']} µs median "
                f"(target ≤ {micro['target_us']:g}), "
                f"synthetic 50 offers/20 rules {micro['synthetic']['median_us']} µs, "
                f"decide_many {micro['decide_many']['decisions_per_s']:,.0f} decisions/s"
            )
        if args.url:
            results.update(_bench_external(args.url, plan, args))
        elif args.compare_ingress:
            results["machine"]["ingress_modes_compared"] = ["proxy", "haproxy"]
            results["ingress_comparison"] = _compare_ingress(plan, args)
            results.update(results["ingress_comparison"][mode])  # the headline keys
        else:
            results.update(bench_one_server(plan, mode, args.fsync, args.shards, args))
    except KeyboardInterrupt:
        say("\nbench: interrupted; the server was stopped")
        return 130
    except launcher.ServerStartError as exc:
        say(f"bench: the server did not start: {exc}")
        return 1
    results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return finish(results, plan, out_path)


def _bench_external(url: str, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    say(f"\n== server: {url} (not started by the benchmark)")
    return run_async(
        _bench_server(
            parts.hostname or "127.0.0.1", parts.port or 80, url.rstrip("/"), None, plan, args
        )
    )


def _compare_ingress(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("proxy", "haproxy"):
        out[mode] = bench_one_server(plan, mode, args.fsync, args.shards, args)
    return out


def ingress_summary(comparison: dict[str, Any]) -> dict[str, Any]:
    """Per mode: noop and decide at the headline concurrency; which mode is faster."""
    rows = {}
    for mode, r in comparison.items():
        noop, decide = r.get("noop", {}), r.get("decide", {})
        rows[mode] = {
            "noop_rps": noop.get("rps"),
            "decide_rps": decide.get("rps"),
            "decided_rps": decide.get("decided_rps"),
            "decide_fallback_rate": decide.get("fallback_rate"),
            "decide_p50_ms": decide.get("p50_ms"),
            "decide_p99_ms": decide.get("p99_ms"),
        }
    ranked = sorted(rows, key=lambda m: rows[m]["decided_rps"] or 0.0, reverse=True)
    return {"modes": rows, "faster": ranked[0] if ranked else None}


def _error_count(results: dict[str, Any]) -> dict[str, Any]:
    by_phase = {p: results[p]["errors"] for p in PHASES if p in results and results[p]["errors"]}
    # External rows at the normal levels count; overload runs report their own.
    ext = results.get("external", {})
    for row in ("noop", "decide", "reference"):
        for level, r in ext.get(row, {}).items():
            if r["errors"]:
                by_phase[f"external.{row}.{level}"] = r["errors"]
    preload = results.get("preload", {}).get("errors", 0)
    return {
        "total": sum(by_phase.values()) + preload,
        "by_phase": by_phase,
        "preload": preload,
        "decide_fallbacks": results.get("decide", {}).get("fallbacks", 0),
    }


def finish(results: dict[str, Any], plan: Plan, out_path: Path) -> int:
    comparison = results.get("ingress_comparison")
    sets = comparison or {results["machine"]["ingress_mode"]: results}
    for mode, r in sets.items():
        phases = [p for p in PHASES if p in r]
        if phases:
            say(f"\n-- ingress {mode}\n" + report.format_table(r, phases))
        if "ratio_decide_to_noop" in r:
            say(
                f"decide ÷ noop throughput: {r['ratio_decide_to_noop']} "
                f"(by concurrency {r.get('ratio_by_concurrency')}); "
                f"real decisions ÷ noop: {r.get('ratio_decided_to_noop')}"
            )
    for r in sets.values():
        shares = {p: r[p].get("no_message_share") for p in ("decide", "batch_decide") if p in r}
        if shares:
            say(f"no-message share (caps fill as the same customers are decided again): {shares}")
        if "campaign" in r:
            c = r["campaign"]
            say(
                f"campaign over fresh customers (batch decide, each once): median "
                f"{_num(c['decisions_per_s_median'])} decisions/s {c['repeats']}, offered "
                f"{c['offered_share']}"
            )
    if "external" in results:
        from loadtest.external import format_external

        ext = results["external"]
        say("\n-- wrk (external load generator) and the no-Ray reference\n" + format_external(ext))
        say(
            f"decide ÷ noop (wrk): {ext['ratio_decide_to_noop']}; "
            f"decide ÷ reference: {ext['ratio_decide_to_reference']}"
        )
    if comparison:
        results["ingress_summary"] = ingress_summary(comparison)
        say(f"\n== ingress comparison at c={max(plan.levels)} (medians)")
        for mode, row in results["ingress_summary"]["modes"].items():
            say(
                f"  {mode:<8} noop {_num(row['noop_rps'])} req/s  decide {_num(row['decide_rps'])}"
                f" req/s ({_num(row['decided_rps'])} real decisions/s, "
                f"{row['decide_fallback_rate']:.0%} fallbacks)  p99 {row['decide_p99_ms']} ms"
            )
        say(f"  faster: {results['ingress_summary']['faster']}")
    counts = {mode: _error_count(r) for mode, r in sets.items()}
    results["errors"] = {
        "total": sum(c["total"] for c in counts.values()),
        **({"by_mode": counts} if comparison else next(iter(counts.values()))),
    }
    results["ok"] = results["errors"]["total"] == 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"\nwrote {out_path}")
    if not results["ok"]:
        bar = "!" * 72
        say(
            f"\n{bar}\n!! THIS RUN HAD ERRORS: {results['errors']}\n"
            f"!! The numbers above are NOT valid; see error_samples in the JSON\n{bar}"
        )
        return 2
    for mode, r in sets.items():
        decide = r.get("decide", {})
        if decide.get("fallbacks"):
            say(
                f"note ({mode}): {decide['fallbacks']} decide answers were the catalogue fallback "
                f"(deadline missed); at c={max(plan.levels)} {decide['fallback_rate']:.0%} of "
                f"answers, {decide['decided_rps']:,.0f} real decisions/s"
            )
    required = [k for k in report.REQUIRED_KEYS
                if plan.campaign_waves or not k.startswith("campaign.")]  # fmt: skip
    missing = report.missing_keys(results, required) if set(PHASES) <= set(plan.phases) else []
    if missing:
        say(f"bench: missing keys in the results: {missing}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
