"""Run by test_ray_import.py in its own process: a 2-node local Ray cluster, a server, a Ray job.

Prints one JSON line: the job's summary and the page-view counts read back.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import httpx
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests_support import free_port

from models.bulk.mapping import ColumnMapping
from models.settings import load_settings
from serving import server
from serving.bulk.rayjob import run_ray_import


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rtim-ray-import-"))
    inputs = work / "in"
    (inputs / "day2").mkdir(parents=True)
    expected: dict[str, int] = {}
    for n, path in enumerate([inputs / "a.csv", inputs / "b.csv", inputs / "day2" / "c.csv"]):
        lines = ["cust,kind,page"]
        for i in range(300):
            cid = f"ray-{(i + n) % 100}"  # 9 events each: within the 32-id dedupe memory
            if i % 100 == 99:
                lines.append(f"{cid},no_such_type,/x")
            else:
                lines.append(f"{cid},page_view,/p{i % 5}")
                expected[cid] = expected.get(cid, 0) + 1
        path.write_text("\n".join(lines) + "\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    settings = load_settings(None, {"host": "127.0.0.1", "port": free_port(), "shards": 2,
                                    "partitions": 16, "data_dir": str(work / "data"),
                                    "ingress_mode": "proxy"})  # fmt: skip
    runtime = server.start(settings, address=cluster.address)
    try:
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        mapping = ColumnMapping(
            {"customer_id": "cust", "type": "kind"}, {}, {"page": ("page", "str")}
        )
        summary = run_ray_import([str(inputs)], mapping, work / "rejects.csv", writers=2)
        again = run_ray_import([str(inputs)], mapping, work / "rejects2.csv", writers=2)
        counts = {
            cid: httpx.get(f"{runtime.url}/v1/profiles/{cid}", timeout=30).json()["counters"][
                "page_view"
            ]["30d"]
            for cid in expected
        }
        rejects = (work / "rejects.csv").read_text().splitlines()
    finally:
        server.stop(runtime)
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"nodes": nodes, "summary": summary, "again": again, "counts": counts,
                      "expected": expected, "rejects": len(rejects) - 1}))  # fmt: skip


if __name__ == "__main__":
    main()
