"""Scale-out scenario on a local multi-node Ray cluster (run by ``test_multinode.py``).

Runs in its own process (a Ray cluster per process): a head and two worker
nodes (``ray.cluster_utils.Cluster``), the server on them with a data
directory every node shares, and a client sending events and decides the
whole time. Then: scale 2 → 4 shards, add a node and rebalance (spread
shards onto it), lose a worker node that hosts shards (all its processes
killed), drain another node (its shards restart elsewhere; a rebalance
right after must not bring any back) and remove it, scale back to 2.
Prints one JSON line with what it saw; the test asserts on it.

    python tests/integration/multinode_scenario.py <data_dir> <port>
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"  # one HTTP proxy, on the head

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from tests_support import Traffic, get_json  # noqa: E402

from actors.coordinator import get_or_create_coordinator  # noqa: E402
from actors.shard import NAMESPACE  # noqa: E402
from models.settings import load_settings  # noqa: E402
from serving.deployment import IngressDeployment  # noqa: E402

PARTITIONS = 32


def get(c: httpx.Client, path: str) -> Any:
    return get_json(c, path, timeout_s=90.0)


def start_job(c: httpx.Client, method: str, path: str, body: dict) -> None:
    """Start a scaling job, retrying while the coordinator restarts (503), boundedly."""
    deadline = time.monotonic() + 90
    while True:
        r = c.request(method, path, json=body)
        if r.status_code == 202:
            return
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(1)


def wait_job(c: httpx.Client, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        p = get(c, "/v1/admin/rebalance")
        if not p["running"]:
            if p["error"]:
                raise RuntimeError(p["error"])
            return p
        if time.monotonic() > deadline:
            raise RuntimeError(f"job did not finish: {p}")
        time.sleep(0.5)


def shards_on(c: httpx.Client) -> list[dict]:
    return get(c, "/v1/admin/shards")["shards"]


def stop_cluster(cluster: Cluster) -> None:
    """Kill every node's processes (a graceful stop took over a minute on a loaded machine)."""
    for node in [*cluster.worker_nodes, cluster.head_node]:
        if node is not None:
            cluster.remove_node(node, allow_graceful=False)


def misplaced(job: dict) -> list[dict]:
    """The job's relocations that did not land on the node asked for."""
    return [m for m in job["last_moves"] if m.get("landed") != m.get("node")]


def main() -> None:
    data_dir, port = sys.argv[1], int(sys.argv[2])
    log: list[str] = []
    started = time.monotonic()

    def step(msg: str) -> None:
        log.append(f"{time.monotonic() - started:6.1f}s {msg}")
        print(log[-1], file=sys.stderr, flush=True)

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}}
    )
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
    except BaseException:
        stop_cluster(cluster)  # no Ray processes left behind by a start-up that timed out
        raise
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    step("cluster: head + 2 workers")
    settings = load_settings(None, {"port": port, "shards": 2, "partitions": PARTITIONS,
                                    "data_dir": data_dir, "ingress_mode": "proxy"})  # fmt: skip
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    coordinator = get_or_create_coordinator(settings)
    ray.get(coordinator.wait_ready.remote(), timeout=120)
    # The ingress replica stays on the head, which is never removed.
    ingress = IngressDeployment.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": {"head": 0.01}}
    ).bind(settings.to_dict())
    serve.run(ingress, name="rtim", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    customers = [f"mn-{uuid.uuid4().hex[:8]}" for _ in range(60)]
    traffic = Traffic(base, customers)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            get(c, "/readyz")
            step("server up with 2 shards")
            traffic.start()
            time.sleep(2)
            start_job(c, "PUT", "/v1/admin/shards", {"shards": 4})
            wait_job(c)
            spread = {s["shard"]: s["node"] for s in shards_on(c)}
            result["nodes_after_scale_out"] = len(set(spread.values()))
            step(f"scaled to 4 shards on {result['nodes_after_scale_out']} nodes")
            workers.append(cluster.add_node(num_cpus=1))
            cluster.wait_for_nodes()
            start_job(c, "POST", "/v1/admin/rebalance", {})
            job = wait_job(c)
            result["relocated_to_new_node"] = job["moves_done"]
            result["relocations"] = job["last_moves"]
            result["misplaced"] = misplaced(job)
            spread = {s["shard"]: s["node"] for s in shards_on(c)}
            result["nodes_after_rebalance"] = len(set(spread.values()))
            step(f"node added; rebalanced: {result['relocated_to_new_node']} shards moved, "
                 f"on {result['nodes_after_rebalance']} nodes")  # fmt: skip

            # Node loss: kill every process of a worker node that hosts shards.
            by_node = {w.node_id: w for w in workers}
            lost = next(n for s, n in spread.items() if n in by_node)
            result["lost_node_shards"] = sorted(s for s, n in spread.items() if n == lost)
            cluster.remove_node(by_node[lost], allow_graceful=False)
            workers.remove(by_node[lost])
            deadline = time.monotonic() + 120
            while True:
                shards = shards_on(c)
                if len(shards) == 4 and all(s["node"] != lost for s in shards):
                    break
                assert time.monotonic() < deadline, "shards did not come back"
                time.sleep(1)
            step(f"node lost; shards {result['lost_node_shards']} back on other nodes")

            # Drain a node (every shard restarts elsewhere), then remove it.
            spread = {s["shard"]: s["node"] for s in shards_on(c)}
            by_node = {w.node_id: w for w in workers}
            drained = next((n for n in spread.values() if n in by_node), None)
            if drained is not None:
                start_job(c, "POST", "/v1/admin/rebalance", {"drain": drained})
                job = wait_job(c)
                result["misplaced"] += misplaced(job)
                left = [s for s in shards_on(c) if s["node"] == drained]
                assert not left, f"shards still on the drained node: {left}"
                result["drained_shards"] = sorted(s for s, n in spread.items() if n == drained)
                nodes = {n["node"]: n for n in get(c, "/v1/admin/nodes")["nodes"]}
                # Still up (the coordinator or an identity shard may run there) and marked
                # draining, or already stopped by Ray (nothing holding resources ran there).
                result["drained_node_state"] = (
                    "gone" if drained not in nodes else
                    "draining" if nodes[drained]["draining"] else "schedulable"
                )  # fmt: skip
                # The drained node is the emptiest: a rebalance would fill it if it could.
                start_job(c, "POST", "/v1/admin/rebalance", {})
                job = wait_job(c)
                result["misplaced"] += misplaced(job)
                result["shards_back_on_drained"] = [s for s in shards_on(c) if s["node"] == drained]
                cluster.remove_node(by_node[drained])
                workers.remove(by_node[drained])
                step(f"drained shards {result['drained_shards']} off a node and removed it")

            start_job(c, "PUT", "/v1/admin/shards", {"shards": 2})
            wait_job(c)
            step("scaled back to 2 shards")
            time.sleep(2)
            traffic.stop()

            stats = get(c, "/v1/admin/shards")
            result["epochs"] = sorted({s["epoch"] for s in stats["shards"]} | {stats["epoch"]})
            result["partitions_owned"] = sum(s["partitions"] for s in stats["shards"])
            result["shards"] = len(stats["shards"])
            wrong = {}
            for cid in customers:
                r = c.get(f"/v1/profiles/{cid}")
                # 404: no profile, right for a customer the slow client never reached.
                n = None
                if r.status_code == 200:
                    n = r.json()["counters"]["page_view"]["1h"]
                elif r.status_code == 404:
                    n = 0
                if n != traffic.sent[cid]:
                    wrong[cid] = [n, traffic.sent[cid]]
            result["profiles_wrong"] = wrong
            result["events_acknowledged"] = sum(traffic.sent.values())
            result["event_resends"] = traffic.resends
            result["events_never_acknowledged"] = len(traffic.lost)
            result["decides"] = traffic.decides
            result["decide_failures"] = traffic.decide_failures[:5]
            result["decide_fallbacks"] = get(c, "/v1/admin/ingress")["decide_fallbacks"]
    except BaseException:
        # What the server looked like when it went wrong (the test prints it).
        result["event_failures"] = traffic.event_failures
        try:
            with httpx.Client(base_url=base, timeout=30) as c:
                result["shards_at_failure"] = shards_on(c)
                result["rebalance_at_failure"] = get(c, "/v1/admin/rebalance")
        except Exception as exc:
            result["shards_at_failure"] = repr(exc)
        raise
    finally:
        result["log"] = log
        try:
            traffic.stop(timeout_s=5)
        except AssertionError:
            pass
        print(json.dumps(result), flush=True)
        ray.shutdown()
        stop_cluster(cluster)


if __name__ == "__main__":
    main()
