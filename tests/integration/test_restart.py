"""``rtim serve``, Ctrl-C, ``rtim serve`` again at once on the same port: everything is back.

The first start makes the local admin key (``<data_dir>/admin.key``), which
the second start keeps using.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
from tests_support import auth_headers, free_port, start_cli_server, stop_cli_server

ROOT = Path(__file__).resolve().parents[2]


def start_server(port: int, data: Path, log: Path) -> subprocess.Popen:
    proc = start_cli_server(port, data, log, shards=2, auth=True)
    assert isinstance(proc, subprocess.Popen)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    stop_cli_server(proc)


def test_restart_restores_profiles_history_and_decisions(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    customers = [f"restart-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    proc = start_server(port, tmp_path / "data", log)
    base = f"http://127.0.0.1:{port}"
    key_file = tmp_path / "data" / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert str(key_file) in log.read_text()
    headers = auth_headers(key_file.read_text().strip())
    assert httpx.get(f"{base}/noop", timeout=10).status_code == 401
    # Keep-alive connections left open across the stop: the server closes
    # them, and its side lingers in TIME_WAIT when the next start binds.
    idle = httpx.Client(base_url=base, timeout=30, headers=headers)
    try:
        with httpx.Client(base_url=base, timeout=30, headers=headers) as c:
            assert all(idle.get("/noop").status_code == 200 for _ in range(5))
            events = []
            for cid in customers:
                events += [
                    {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "page_view"},
                    {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "impression",
                     "offer_id": "savings_account", "channel": "email"},
                    {"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "profile_update",
                     "attributes": {"age": 33}},
                ]  # fmt: skip
            assert c.post("/v1/events", json={"events": events}).status_code == 200
            decided = c.post(
                "/v1/decide/batch", json={"customer_ids": customers, "channel": "web"}
            ).json()["decisions"]
            before = {cid: c.get(f"/v1/profiles/{cid}").json() for cid in customers}
    finally:
        stop_server(proc)
    assert "stopped" in log.read_text()
    proc = start_server(port, tmp_path / "data", log)
    idle.close()
    assert "Address already in use" not in log.read_text()
    try:
        with httpx.Client(base_url=base, timeout=30, headers=headers) as c:
            for cid in customers:
                after = c.get(f"/v1/profiles/{cid}").json()
                assert after["history"] == before[cid]["history"]
                assert after["counters"] == before[cid]["counters"]
                assert after["attributes"] == {"age": 33}
            for d in decided:
                logged = c.get(f"/v1/decisions/{d['decision_id']}")
                assert logged.status_code == 200
                assert logged.json()["customer_id"] == d["customer_id"]
            # Re-sending an old batch after the restart is still deduplicated.
            again = c.post("/v1/events", json={"events": events}).json()
            assert again["duplicates"] == len(events)
    finally:
        stop_server(proc)
