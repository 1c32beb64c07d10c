"""The quick benchmark and the locust scenarios, run for real against real servers.

The benchmark runs as a subprocess (``python -m loadtest.bench --quick``) with
its own server and embedded Ray, exactly as ``make bench QUICK=1`` does.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tests_support

ROOT = Path(__file__).resolve().parents[2]
LOCUST = str(Path(sys.executable).parent / "locust")
SCENARIOS = ("WebVisitor", "CallCenter", "OutboundCampaign", "EventFirehose")
REQUIRED = (
    "noop.rps", "decide.rps", "decide.p50_ms", "decide.p99_ms", "ratio_decide_to_noop",
    "events.events_per_s", "batch_decide.decisions_per_s", "memory.bytes_per_profile",
    "campaign.decisions_per_s_median",
    "profiles", "machine.cores", "machine.ray", "machine.python", "machine.ingress_mode",
    "machine.fsync", "decide.fallback_share",
)  # fmt: skip


def run(cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cmd`` in the repository; on timeout SIGTERM it (the bench then stops its server)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"{cmd[:4]} took over {timeout_s}s:\n{out[-3000:]}")
    return proc.returncode, out


def dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((parts.hostname, parts.port)) == 0


@pytest.mark.slow
@pytest.mark.integration
def test_quick_benchmark_reports_every_number_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    code, log = run(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--external", "--out", str(out)], 300
    )
    assert code == 0, log[-3000:]
    data = json.loads(out.read_text())
    missing = []
    for key in REQUIRED:
        try:
            dotted(data, key)
        except KeyError:
            missing.append(key)
    assert not missing, missing
    assert data["ok"] is True and data["errors"]["total"] == 0
    assert data["profiles"] == 3000 and data["preload"]["profiles"] == 3000
    for phase in ("noop", "decide", "events", "batch_decide"):
        block = data[phase]
        assert block["rps"] > 0 and block["errors"] == 0, (phase, block)
        assert 0 < block["p50_ms"] <= block["p99_ms"], (phase, block)
    for phase in ("decide", "batch_decide"):  # contact caps make such answers cheaper
        assert 0.0 <= data[phase]["no_message_share"] <= 1.0, data[phase]
    camp = data["campaign"]  # one wave of fresh customers, each decided once, all offered
    assert camp["decisions_per_s_median"] > 0 and camp["segment_size"] == 2000, camp
    assert camp["offered_share"] == [1.0], camp
    assert data["events"]["events_per_s"] == pytest.approx(data["events"]["rps"] * 100, rel=0.01)
    assert 0 < data["ratio_decide_to_noop"] < 2
    assert data["memory"]["bytes_per_profile"] > 0
    assert data["memory"]["store_bytes_per_profile"] > 0
    assert data["memory"]["after"]["profiles"] == 3000
    assert data["micro"]["demo"]["median_us"] > 0
    assert data["micro"]["decide_many"]["decisions_per_s"] > 0
    assert data["machine"]["cores"] == os.cpu_count()
    # wrk beside the server: noop, decide and the no-Ray reference; then overload.
    ext = data["external"]
    for row in ("noop", "decide", "reference"):
        r = ext[row]["16"]
        assert r["requests"] > 0 and r["errors"] == 0, (row, r)
        assert r["client_cpu_pct_of_core"] < 100, (row, r)  # wrk is not the bottleneck
    assert ext["decide"]["16"]["fallback_share"] is not None
    assert ext["decide"]["16"]["loop_pauses"] >= 0  # the shards' own loops, counted
    assert "loop_pauses" not in ext["noop"]["16"]
    assert 0.0 <= ext["decide"]["16"]["no_message_share"] <= 1.0  # caps flatter decide rows
    assert 0 < ext["ratio_decide_to_reference"]["16"] < 5
    for mode, r in ext["overload"]["256"].items():
        # Every answer is a decision, a fallback or a 503: asked for, or HAProxy's
        # "overloaded" for decides that found every replica full (edge_decide_maxconn).
        assert set(r["statuses"]) <= {"200", "503"}, (mode, r)
        assert r["decisions"] + r["fallbacks"] + r["rejected_503"] == r["requests"], (mode, r)
    # The benchmark stopped the server it started.
    assert not port_open(data["server"]["url"])


def test_locustfile_defines_every_scenario() -> None:
    code, out = run([LOCUST, "-f", "loadtest/locustfile.py", "--list"], 60)
    assert code == 0, out
    for name in SCENARIOS:
        assert name in out


@pytest.mark.integration
def test_locust_scenarios_run_headless_without_failures(server: str, tmp_path: Path) -> None:
    prefix = tmp_path / "lt"
    env = {
        "RTIM_LT_WAIT_MIN": "0.05", "RTIM_LT_WAIT_MAX": "0.2", "RTIM_LT_CUSTOMERS": "300",
        "RTIM_LT_EVENT_BATCH": "50", "RTIM_LT_CAMPAIGN_BATCH": "20", "RTIM_LT_RESPONSE_RATE": "1",
        "RTIM_LT_API_KEY": tests_support.ADMIN_KEY,
    }  # fmt: skip
    cmd = [LOCUST, "-f", "loadtest/locustfile.py", "--headless", "-u", "16", "-r", "16",
           "-t", "5s", "--host", server, "--csv", str(prefix), "--only-summary"]  # fmt: skip
    code, out = run(cmd, 90, env)
    with open(f"{prefix}_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0, out[-2000:]
    assert int(total["Failure Count"]) == 0, out[-2000:]
    assert code == 0, out[-2000:]
    for name in ("/v1/decide [web]", "/v1/decide [call_center explain]",
                 "/v1/decide/batch [outbound]", "/v1/events [batch 50]",
                 "/v1/events [page_view]"):  # fmt: skip
        assert name in rows, sorted(rows)
