"""The shard bulk microbenchmark cases (``shard_batch``, ``shard_events``), run for real.

They run in a child process: the cases settle the garbage collector as the
shard actor does (``actors/heap.py``), which must not change this test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_shard_bulk_cases_report_cpu_per_decision_and_per_event() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.microbench", "--shard-bulk", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    batch, events = result["shard_batch"], result["shard_events"]
    for case in (batch, events):
        assert case["batch"] == 100 and case["repeats"] == 5 and case["calls_per_run"] == 4
        assert len(case["runs_cpu_us"]) == 5 and all(us > 0 for us in case["runs_cpu_us"])
        assert min(case["runs_cpu_us"]) <= case["cpu_us_per_item"] <= max(case["runs_cpu_us"])
        assert 0 < case["cpu_us_per_item"] < 5000
    # Every decision (warm-up included) wrote its history row: the history is on.
    assert batch["history_rows"] == (batch["warmup_calls"] + 20) * 100
