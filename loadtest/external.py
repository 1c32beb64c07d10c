"""The benchmark's external rows: ``wrk`` against the server, the overload runs, the reference.

Run by :mod:`loadtest.bench` once the server is preloaded (skip with
``--no-external``). At each level (default 16 and 64 connections), repeated
and interleaved so noise hits them alike:

- ``GET /noop`` and ``POST /v1/decide`` on the RTIM server, from ``wrk``;
- ``POST /v1/decide`` on the reference (:mod:`loadtest.reference`: the same
  decision code in one plain ASGI process, no Ray), started beside it.

Then overload (default 256 and 1,200 connections), once each: decide with
the default answer to a missed deadline (the fallback) and with
``RTIM-On-Overload: reject`` (503 + ``Retry-After``), counting real
decisions, fallbacks and 503s. Every figure is the median over the repeats;
each run also records the server's CPU, ``wrk``'s own CPU and what other
processes on the machine used.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadtest import launcher
from loadtest.wrkload import run_wrk

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_READY_S = 600.0
_MEDIANS = ("rps", "decided_rps", "fallback_share", "no_message_share", "p50_ms", "p90_ms",
            "p99_ms", "max_ms",
            "server_cpu_us_per_request", "client_cpu_pct_of_core", "other_cpu_pct")  # fmt: skip
_SUMS = ("requests", "decisions", "fallbacks", "rejected_503", "errors", "loop_pauses")


@contextmanager
def reference_server(profiles: int, api_key: str, log_path: Path) -> Iterator[tuple[str, int]]:
    """Start :mod:`loadtest.reference` on a free port; yield (url, pid); stop it."""
    port = launcher.free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.reference", "--port", str(port),
             "--profiles", str(profiles)],
            cwd=ROOT, env={**os.environ, "RTIM_API_KEY": api_key},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + REFERENCE_READY_S
        while not _answers(url, api_key):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the reference server did not start; see {log_path}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str, api_key: str) -> bool:
    req = urllib.request.Request(url + "/noop", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            return resp.status == 200
    except OSError:
        return False


def loop_pauses(url: str) -> tuple[int, float] | None:
    """The shards' event-loop pauses so far (count, seconds; actors/loopwatch.py);
    None when the key may not read ``/v1/admin/shards`` (not reported, not 0)."""
    status, body = launcher.http_json(url + "/v1/admin/shards", timeout_s=30.0)
    if status != 200 or not isinstance(body, dict):
        return None
    loops = [s.get("loop") or {} for s in body.get("shards", [])]
    return sum(w.get("pauses", 0) for w in loops), sum(w.get("paused_s", 0.0) for w in loops)


def measured(
    run: Callable[[], dict[str, Any]],
    server_cpu: Callable[[], float],
    pauses: Callable[[], tuple[int, float] | None] | None = None,
) -> dict[str, Any]:
    """``run()`` with the server's CPU per request, other processes' share of the
    machine and (with ``pauses``) how often the shards' event loops stood still."""
    paused0 = pauses() if pauses is not None else None
    cpu0, busy0, wall0 = server_cpu(), launcher.machine_busy_s(), time.monotonic()
    res = run()
    server = server_cpu() - cpu0
    capacity = (time.monotonic() - wall0) * (os.cpu_count() or 1)
    other = max(launcher.machine_busy_s() - busy0 - server - res["client_cpu_s"], 0.0)
    res["server_cpu_us_per_request"] = round(server / max(res["requests"], 1) * 1e6, 1)
    res["other_cpu_pct"] = round(100.0 * other / capacity, 1)
    paused1 = pauses() if paused0 is not None and pauses is not None else None
    if paused0 is not None and paused1 is not None:
        res["loop_pauses"] = paused1[0] - paused0[0]
        res["loop_paused_ms"] = round((paused1[1] - paused0[1]) * 1e3, 1)
    return res


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in _MEDIANS:
        values = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = round(statistics.median(values), 4) if values else None
    for k in _SUMS:
        if any(k in r for r in runs):  # loop_pauses: RTIM's rows only
            out[k] = sum(r.get(k, 0) for r in runs)
    out["rps_each"] = [r["rps"] for r in runs]
    out["repeats"] = len(runs)
    return out


def measure_external(
    url: str,
    api_key: str,
    sid: int | None,
    *,
    profiles: int,
    levels: tuple[int, ...],
    overload_levels: tuple[int, ...],
    duration_s: float,
    repeats: int,
    reference_profiles: int,
    log_dir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Every external row; the JSON block ``external`` of ``latest.json``."""

    def rtim_cpu() -> float:
        return sum(launcher.session_cpu(sid).values()) if sid else 0.0

    def rtim_pauses() -> tuple[int, float] | None:
        return loop_pauses(url)

    def wrk(target: str, path: str, conns: int, **kw: Any) -> dict[str, Any]:
        customers = reference_profiles if target != url else profiles
        return run_wrk(target, path, conns, duration_s, api_key=api_key, customers=customers, **kw)

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"noop": {}, "decide": {}, "reference": {}}
    say(f"-- wrk: reference server ({reference_profiles:,} profiles in one process, no Ray)")
    with reference_server(reference_profiles, api_key, log_dir / "reference.log") as (ref, pid):

        def ref_cpu() -> float:
            return sum(launcher.session_cpu(pid).values())

        for rep in range(repeats):
            for level in levels:
                for row, target, path, cpu, paused in (
                    ("noop", url, "/noop", rtim_cpu, None),
                    ("decide", url, "/v1/decide", rtim_cpu, rtim_pauses),
                    ("reference", ref, "/v1/decide", ref_cpu, None),
                ):
                    r = measured(lambda: wrk(target, path, level), cpu, paused)  # noqa: B023
                    runs[row].setdefault(level, []).append(r)
                    say(_line(f"rep {rep + 1} c={level:<4} {row}", r))
    out: dict[str, Any] = {
        "tool": "wrk",
        "duration_s": duration_s,
        "repeats": repeats,
        "reference_profiles": reference_profiles,
    }
    for row, by_level in runs.items():
        out[row] = {str(lv): combine(rs) for lv, rs in sorted(by_level.items())}
    out["ratio_decide_to_noop"] = _ratios(out["decide"], out["noop"])
    out["ratio_decide_to_reference"] = _ratios(out["decide"], out["reference"])
    best = max((b["decided_rps"] or 0.0) for b in out["decide"].values())
    overload: dict[str, Any] = {}
    for level in overload_levels:
        for mode, headers in (("fallback", None), ("reject", {"RTIM-On-Overload": "reject"})):
            r = measured(
                lambda: wrk(url, "/v1/decide", level, headers=headers),  # noqa: B023
                rtim_cpu,
                rtim_pauses,
            )
            r["goodput_share_of_best"] = round(r["decided_rps"] / best, 4) if best else None
            overload.setdefault(str(level), {})[mode] = r
            say(_line(f"overload c={level:<5} on_overload={mode}", r))
    out["overload"] = overload
    return out


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    return {lv: round(a[lv]["rps"] / b[lv]["rps"], 4) if b[lv]["rps"] else None for lv in a}


def _line(label: str, r: dict[str, Any]) -> str:
    fb = f"  fallbacks {r['fallback_share']:.2%}" if r.get("fallback_share") is not None else ""
    if r.get("no_message_share") is not None:
        fb += f"  no message {r['no_message_share']:.0%}"
    rej = f"  503s {r['rejected_503']}" if r["rejected_503"] else ""
    err = f"  ERRORS {r['errors']}" if r["errors"] else ""
    if r.get("loop_pauses"):
        err += f"  shard loop pauses {r['loop_pauses']} ({r['loop_paused_ms']:,.0f} ms)"
    return (
        f"  {label:<34}{r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
        f"{fb}{rej}{err}  (wrk {r['client_cpu_pct_of_core']:.0f}% of a core, "
        f"other {r['other_cpu_pct']:.0f}%)"
    )


def format_external(block: dict[str, Any]) -> str:
    """The external rows as a plain-text table."""
    head = (
        f"{'row':<28}{'conn':>6}{'req/s':>9}{'decided/s':>10}{'fallback':>9}{'503s':>6}"
        f"{'p50 ms':>8}{'p99 ms':>9}{'srv µs/req':>11}{'other%':>7}"
    )
    lines = [head, "-" * len(head)]

    def row(name: str, level: str, r: dict[str, Any]) -> None:
        share = r.get("fallback_share")
        lines.append(
            f"{name:<28}{level:>6}{r['rps']:>9,.0f}{r['decided_rps']:>10,.0f}"
            f"{(f'{share:.2%}' if share is not None else '-'):>9}{r['rejected_503']:>6}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>9.1f}"
            f"{(r['server_cpu_us_per_request'] or 0):>11,.0f}{(r['other_cpu_pct'] or 0):>7.0f}"
        )

    for name, key in (("noop (wrk)", "noop"), ("decide (wrk)", "decide"),
                      ("reference decide (wrk)", "reference")):  # fmt: skip
        for level, r in block[key].items():
            row(name, level, r)
    for level, modes in block["overload"].items():
        for mode, r in modes.items():
            row(f"decide overload, {mode}", level, r)
    return "\n".join(lines)
