"""Scaling on a real multi-node Ray cluster: add a node, scale out, lose a node, drain, scale in.

The scenario runs in a subprocess (``multinode_scenario.py``: one Ray
cluster per process) on a local ``ray.cluster_utils.Cluster`` with a data
directory all nodes share, under continuous events and decides.

Not part of ``make test`` (marker ``multinode``; run it with
``make test PYTEST_ARGS="-m multinode"``). The lost-acknowledgement failure
it used to show is fixed (the restarted coordinator ran two layout jobs at
once; ``test_move_crashes.py`` reproduces that case on one node), but its
drain step is flaky on a 2-core machine: Ray's soft node affinity can keep
starting the drained node's shard on that node, and the drain then stops
with ``MoveStalled`` (seen on the final fresh-clone CI run of 2026-11-25).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests_support import free_port

pytestmark = pytest.mark.multinode

SCENARIO = Path(__file__).with_name("multinode_scenario.py")


def test_scale_out_node_loss_drain_and_scale_in_lose_nothing(tmp_path: Path) -> None:
    # A private Ray temp directory: the cluster's "current cluster" file must
    # not make other Ray programs on this machine join it.
    ray_tmp = tempfile.mkdtemp(prefix="rtim-mn-", dir="/tmp")
    try:
        run = subprocess.run(
            [sys.executable, str(SCENARIO), str(tmp_path / "data"), str(free_port())],
            capture_output=True,
            text=True,
            timeout=420,
            env={**os.environ, "RAY_TMPDIR": ray_tmp, "RTIM_AUTH": "false"},
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, run.stderr[-4000:]
    result = json.loads(lines[-1])
    assert run.returncode == 0, (result.get("log"), run.stderr[-4000:])
    assert result["nodes_after_scale_out"] >= 2, result  # new shards went to other nodes
    assert result["lost_node_shards"], result
    assert result["relocated_to_new_node"] >= 1, result  # rebalance used the new node
    # Each relocation says where the shard runs now (placement is best effort: Ray's soft
    # node affinity may start it elsewhere after RELOCATE_ATTEMPTS), and the new node has
    # work now.
    assert all(m["landed"] for m in result["relocations"]), result["relocations"]
    assert result["nodes_after_rebalance"] > result["nodes_after_scale_out"], result
    assert result["drained_shards"], result
    # One map everywhere: every shard at the coordinator's epoch, each partition owned once.
    assert len(result["epochs"]) == 1 and result["shards"] == 2
    assert result["partitions_owned"] == 32
    # Every acknowledged event exactly once, every profile readable.
    assert result["events_never_acknowledged"] == 0
    assert result["events_acknowledged"] > 0 and result["profiles_wrong"] == {}, result
    # Decides never failed; the fallback answered some while shards moved or restarted.
    assert result["decides"] > 0 and result["decide_failures"] == [], result
    print("decide fallbacks:", result["decide_fallbacks"], "of", result["decides"])
