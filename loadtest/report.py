"""Turning repeated phase results into the benchmark's numbers, table and JSON.

Each (phase, concurrency) ran ``repeats`` times, interleaved with the other
phases; every number reported is the median over those repeats, and errors
are summed over them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Keys the JSON must hold (nested dicts addressed with dots); tests check them.
REQUIRED_KEYS = (
    "noop.rps",
    "decide.rps",
    "decide.p50_ms",
    "decide.p99_ms",
    "decide.fallback_share",
    "ratio_decide_to_noop",
    "events.events_per_s",
    "batch_decide.decisions_per_s",
    "batch_decide.no_message_share",
    "decide.no_message_share",
    "campaign.decisions_per_s_median",
    "campaign.offered_share",
    "memory.bytes_per_profile",
    "profiles",
    "machine.cores",
    "machine.ray",
    "machine.python",
    "machine.ingress_mode",
    "machine.fsync",
)
PHASE_UNITS = {  # phase -> (name of items/s, items per request attribute)
    "noop": None,
    "decide": "decisions_per_s",
    "events": "events_per_s",
    "batch_decide": "decisions_per_s",
}
_MEDIAN_KEYS = (
    "rps",
    "items_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "max_ms",
    "client_cpu_us_per_request",
    "server_cpu_us_per_request",
    "other_cpu_pct",
    "flagged_rate",
    "unflagged_rps",
    "counted_share",
)


def get_path(data: Mapping[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; KeyError naming the missing part."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def missing_keys(data: Mapping[str, Any], keys: Iterable[str] = REQUIRED_KEYS) -> list[str]:
    out = []
    for k in keys:
        try:
            get_path(data, k)
        except KeyError:
            out.append(k)
    return out


def _median(values: Sequence[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(nums), 3) if nums else None


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One (phase, concurrency): medians of the repeats, errors summed."""
    out: dict[str, Any] = {k: _median([r.get(k) for r in runs]) for k in _MEDIAN_KEYS}
    out["repeats"] = len(runs)
    out["rps_each"] = [r["rps"] for r in runs]
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["flagged"] = sum(r["flagged"] for r in runs)
    statuses: dict[str, int] = {}
    exceptions: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["exceptions"].items():
            exceptions[k] = exceptions.get(k, 0) + v
    out["statuses"] = statuses
    out["exceptions"] = exceptions
    out["error_samples"] = [s for r in runs for s in r["error_samples"]][:3]
    cpu: dict[str, list[float]] = {}
    for r in runs:
        for name, us in r.get("server_cpu_by_process", {}).items():
            cpu.setdefault(name, []).append(us)
    out["server_cpu_us_per_request_by_process"] = {
        name: _median(v) for name, v in sorted(cpu.items(), key=lambda kv: -max(kv[1]))
    }
    return out


def phase_block(phase: str, by_level: dict[int, dict[str, Any]], headline: int) -> dict[str, Any]:
    """The JSON block of one phase: the headline level's numbers plus every level."""
    head = by_level[headline]
    block: dict[str, Any] = {
        "concurrency": headline,
        **{k: head[k] for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms")},
        "errors": sum(v["errors"] for v in by_level.values()),
    }
    unit = PHASE_UNITS.get(phase)
    if unit:
        block[unit] = head["items_per_s"]
    if phase == "decide":
        # Fallback answers (deadline missed) are 200s but not decisions: count them apart.
        block["fallbacks"] = sum(v["flagged"] for v in by_level.values())
        block["fallback_rate"] = head["flagged_rate"]
        block["fallback_share"] = head["flagged_rate"]  # the name the issue tracker uses
        block["decided_rps"] = head["unflagged_rps"]
    if phase in ("decide", "batch_decide"):
        # Contact caps answer "no message" more cheaply than a full decision:
        # a run that re-decides for the same customers gets faster as they fill.
        block["no_message_share"] = head.get("counted_share")
    block["by_concurrency"] = {str(level): v for level, v in sorted(by_level.items())}
    return block


def format_table(results: dict[str, Any], phases: Sequence[str]) -> str:
    """A plain-text table of every phase and level."""
    head = (
        f"{'phase':<13}{'conc':>5}{'req/s':>10}{'items/s':>10}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'errors':>7}{'srv µs/req':>11}{'cli µs/req':>11}{'other%':>7}"
    )
    lines = [head, "-" * len(head)]
    # other%: CPU used by processes that are neither the server nor this client (noise).
    for phase in phases:
        block = results.get(phase)
        if not block:
            continue
        for level, r in block["by_concurrency"].items():
            lines.append(
                f"{phase:<13}{level:>5}{_f(r['rps'], 0):>10}{_f(r['items_per_s'], 0):>10}"
                f"{_f(r['p50_ms'], 2):>9}{_f(r['p95_ms'], 2):>9}{_f(r['p99_ms'], 2):>9}"
                f"{r['errors']:>7}{_f(r['server_cpu_us_per_request'], 0):>11}"
                f"{_f(r['client_cpu_us_per_request'], 0):>11}{_f(r['other_cpu_pct'], 0):>7}"
            )
    return "\n".join(lines)


def _f(v: Any, digits: int) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.{digits}f}"
