"""The data directory's partition map is kept: another shard count never serves a partial view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from tests_support import free_port, start_cli_server, stop_cli_server

from actors.coordinator import layout_conflict, stored_map
from models.partitioning import PartitionMap
from models.settings import load_settings


def test_a_data_directory_without_a_stored_map_is_read_as_its_round_robin_layout(
    tmp_path: Path,
) -> None:
    for i in range(3):
        (tmp_path / f"shard-{i}").mkdir()
    settings = load_settings(None, {"data_dir": str(tmp_path), "partitions": 16, "shards": 2})
    assert stored_map(settings) == PartitionMap.initial(16, 3)
    conflict = layout_conflict(settings)
    assert conflict is not None and "3 shard(s)" in conflict and "2 shard(s)" in conflict


def test_changing_the_partition_count_is_refused(tmp_path: Path) -> None:
    stored = {"map": PartitionMap.initial(32, 2).to_dict(), "identity_shards": 2}
    (tmp_path / "coordinator.json").write_text(json.dumps(stored))
    settings = load_settings(None, {"data_dir": str(tmp_path), "partitions": 16})
    assert stored_map(settings) == PartitionMap.initial(32, 2)
    conflict = layout_conflict(settings)
    assert conflict is not None and "32 partitions" in conflict and "16" in conflict
    same = load_settings(None, {"data_dir": str(tmp_path), "partitions": 32, "shards": 0})
    assert layout_conflict(same) is None


def test_restart_with_another_shard_count_is_refused_and_the_stored_count_serves_everyone(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    customers = [f"layout-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    proc = start_cli_server(port, data, log, shards=1)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            events = [{"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"}
                      for cid in customers]  # fmt: skip
            assert c.post("/v1/events", json={"events": events}).json()["applied"] == 20
    finally:
        stop_cli_server(proc)

    env = {**os.environ, "RTIM_SHARDS": "2", "RTIM_DATA_DIR": str(data), "RTIM_PARTITIONS": "32"}
    refused = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "holds 1 shard(s)" in refused.stderr and "2 shard(s) were asked" in refused.stderr
    assert "--shards 1" in refused.stderr

    # shards: 0 (one per CPU) on a data directory uses its stored count.
    proc = start_cli_server(port, data, log, shards=0)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for cid in customers:
                assert c.get(f"/v1/profiles/{cid}").status_code == 200, cid
            assert len(c.get("/v1/admin/shards").json()["shards"]) == 1
    finally:
        stop_cli_server(proc)
