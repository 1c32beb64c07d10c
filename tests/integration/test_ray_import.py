"""The Ray Data import job on a local two-node Ray cluster (in its own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ray_data_job_imports_a_directory_across_two_nodes_exactly_once() -> None:
    pytest.importorskip("ray.data")
    out = subprocess.run(
        [sys.executable, str(HERE / "multinode_import.py")],
        capture_output=True, text=True, timeout=300, cwd=HERE.parents[1],
        env={**os.environ, "RTIM_AUTH": "false"},  # its own server; keys are not the point
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2
    summary, again = result["summary"], result["again"]
    assert (summary["files"], summary["read"], summary["rejected"]) == (3, 900, 9)
    assert (summary["applied"], summary["duplicates"]) == (891, 0)
    assert (again["applied"], again["duplicates"]) == (0, 891)
    assert result["counts"] == result["expected"]
    assert result["rejects"] == 9
