"""The external load generator: ``wrk`` (compiled, multi-threaded) driven by ``wrk/rtim.lua``.

The benchmark's own Python client shares the interpreter's costs with what it
measures; ``wrk`` is the figure an outside caller would see. :func:`ensure_wrk`
installs it with ``apt-get`` when it is missing and we are root (else it says
how). :func:`run_wrk` runs one phase and returns its numbers: answers by
status, decide fallbacks (answers with ``"fallback":true``) and their share,
real decisions per second, 503s, socket errors, latency percentiles and the
CPU ``wrk`` itself used (so a reader can see it was not the bottleneck).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "wrk" / "rtim.lua"
MARK = "RTIM_WRK "


class WrkMissing(RuntimeError):
    """``wrk`` is not installed and could not be installed."""


def ensure_wrk() -> str:
    """The path of ``wrk``, installing it (Debian/Ubuntu, as root) when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            check=False, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        found = shutil.which("wrk")
        if found:
            return found
    raise WrkMissing(
        "wrk is not installed: run `sudo apt-get install -y wrk` (or skip with --no-wrk)"
    )


def run_wrk(
    url: str,
    path: str,
    connections: int,
    duration_s: float,
    *,
    api_key: str,
    customers: int = 1000,
    extra_body: str = "",
    headers: dict[str, str] | None = None,
    threads: int = 2,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One ``wrk`` run against ``url + path``; the numbers of :func:`summarise`."""
    cmd = [
        ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s", "-s", str(SCRIPT),
    ]  # fmt: skip
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    env = {
        **os.environ,
        "RTIM_API_KEY": api_key,
        "RTIM_WRK_PATH": path,
        "RTIM_WRK_CUSTOMERS": str(max(customers, 1)),
        "RTIM_WRK_BODY": extra_body,
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*cmd, url], env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 60
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr[-500:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = summarise(json.loads(line[len(MARK) :]), cpu_s)
    if path != "/v1/decide":
        result["no_message_share"] = None  # only decide answers carry offers
    return result


def summarise(raw: dict[str, Any], client_cpu_s: float = 0.0) -> dict[str, Any]:
    """Per-second rates, shares and counts from the Lua script's ``done()`` line."""
    seconds = max(raw["seconds"], 1e-9)
    by_status = {str(k): int(v) for k, v in raw["by_status"].items()}
    ok = by_status.get("200", 0)
    fallbacks = int(raw["fallbacks"])
    rejected = by_status.get("503", 0)
    socket_errors = sum(raw["socket_errors"][k] for k in ("connect", "read", "write", "timeout"))
    other = sum(v for k, v in by_status.items() if k not in ("200", "503"))
    answers = sum(by_status.values())
    return {
        "rps": round(answers / seconds, 1),
        "decided_rps": round((ok - fallbacks) / seconds, 1),
        "requests": answers,
        "decisions": ok - fallbacks,
        "fallbacks": fallbacks,
        "fallback_share": round(fallbacks / ok, 4) if ok else None,
        # Real decisions that sent nothing (contact caps, no eligible offer): they
        # skip scoring, so a run where most are capped is a cheaper run.
        "no_message_share": round(int(raw.get("no_message", 0)) / (ok - fallbacks), 4)
        if ok > fallbacks
        else None,
        "rejected_503": rejected,
        "errors": socket_errors + other,
        "socket_errors": raw["socket_errors"],
        "statuses": by_status,
        **{k: round(raw[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")},
        "seconds": round(seconds, 2),
        "client_cpu_s": round(client_cpu_s, 3),
        "client_cpu_us_per_request": round(client_cpu_s / max(answers, 1) * 1e6, 1),
        "client_cpu_pct_of_core": round(100.0 * client_cpu_s / seconds, 1),
    }
