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


def test_settle_freezes_the_start_up_heap_and_still_collects_new_cycles() -> None:
    script = """
import gc, json, weakref
from actors import heap
class Node:
    pass
old = Node()
frozen = heap.settle()
new = Node(); new.me = new  # a cycle made after settling
gone = []
ref = weakref.ref(new, lambda _r: gone.append(True))
del new
gc.collect()
print(json.dumps({"frozen": frozen, "old_visited": any(o is old for o in gc.get_objects()),
                  "young": gc.get_threshold()[0], "cycle_collected": gone == [True]}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["frozen"] > 1000  # the interpreter's modules and what the imports built
    assert got["old_visited"] is False  # frozen: the collector no longer walks it
    assert got["young"] == 10_000 and got["cycle_collected"] is True
