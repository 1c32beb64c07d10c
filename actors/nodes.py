"""The cluster's nodes as Ray's GCS sees them: which can take a shard, and draining one.

Two Ray facts make shard placement work, both measured on a local
``ray.cluster_utils.Cluster`` (see the README's Operations section):

- **An actor that asks for no resources ignores soft node affinity.** Ray's
  scheduler places a creation task with an empty resource request on a
  random live node whatever its strategy says (only *hard* node affinity is
  honoured: ``ClusterResourceScheduler::GetBestSchedulableNode``, "the zero
  cpu actor is a special case"). Shard actors used to ask for ``num_cpus=0``,
  so "start shard 3 on node B" landed on B only about one time in three on
  three nodes (21 misses in 30 starts), and a drain could start the shard
  on the very node it was leaving. Asking for :data:`SHARD_CPUS` (a
  thousandth of a CPU) makes soft affinity exact (15 of 15 under load), and
  a shard whose node is lost still restarts on another node (soft: Ray's
  default policy takes over when the node is gone).
- **A drained node takes no new actor.** :func:`drain_node` is the GCS
  ``DrainNode`` call that ``ray drain-node`` and Ray's autoscaler use: the
  node is marked draining, every scheduler leaves it out (a relocation, a
  restart after another node's loss, a new shard from ``rtim scale``), the
  actors on it keep running until they are moved, and once nothing holding
  resources runs there its raylet exits by itself. Draining is one-way:
  the node is meant to be removed.
"""

from __future__ import annotations

import ray
from ray.core.generated import autoscaler_pb2

# Every shard (and the coordinator) asks for this much CPU: a non-empty request
# is what makes Ray honour node affinity (module docstring). 256 shards take a
# quarter of a CPU's logical capacity; a node must have at least this much.
SHARD_CPUS = 0.001


def _gcs() -> ray._raylet.GcsClient:
    return ray._private.worker.global_worker.gcs_client


def draining_nodes() -> set[str]:
    """Ids of the live nodes that are draining (they take no new actor)."""
    return set(_gcs().get_draining_nodes())


def live_nodes() -> dict[str, float]:
    """Nodes that can take a shard now: live, not draining, with CPUs for it → their CPUs."""
    draining = draining_nodes()
    return {n: c for n, c in all_live_nodes().items() if n not in draining and c >= SHARD_CPUS}


def all_live_nodes() -> dict[str, float]:
    """Every live node → its CPUs, draining ones and CPU-less ones included."""
    return {n["NodeID"]: float(n.get("Resources", {}).get("CPU", 0.0))
            for n in ray.nodes() if n.get("Alive")}  # fmt: skip


def head_node() -> str | None:
    """The head node's id (it runs the GCS: never drained)."""
    for node_id, info in _gcs().get_all_node_info().items():
        if info.is_head_node:
            return node_id.hex()
    return None


def drain_node(node_id: str, why: str) -> str | None:
    """Mark ``node_id`` draining in the GCS (no deadline); None, or why Ray refused.

    Reason "preemption": the GCS accepts it whatever runs on the node ("idle
    termination" is refused while actors run there, and ours are about to move).
    """
    accepted, refusal = _gcs().drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), why, 0
    )
    return None if accepted else (refusal or "refused by the GCS")
