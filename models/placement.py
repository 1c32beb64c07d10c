"""Shard placement over cluster nodes: which node has the most room, and the spread plan.

Pure functions (no Ray): the coordinator (``actors/coordinator.py``) feeds
them the live nodes (id → CPUs) and where each shard actor runs now. A
node's *room* is its CPU count divided by the shards it hosts (plus one):
shards take no logical CPUs of their own, so CPUs are the measure of how
much a node can do, and the shard count of how much it is asked to do.

A *relocation* moves a shard actor to another node: the coordinator stops
it and starts it again there on the same data directory (the shared data
directory every node mounts, as for node loss), so no partition changes
owner and the partition map only bumps its epoch (regions then fetch the
new actor handle).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def most_room(nodes: Mapping[str, float], hosted: Iterable[str]) -> str:
    """The node with the most room for one more shard (ties: the lowest node id).

    ``nodes``: live node id → CPUs (at least one node); ``hosted``: the node
    of every shard already placed.
    """
    if not nodes:
        raise ValueError("no live node to place a shard on")
    load = Counter(n for n in hosted if n in nodes)
    return min(sorted(nodes), key=lambda n: (load[n] + 1) / max(nodes[n], 1e-9))


def spread_plan(
    shard_nodes: Mapping[int, str], nodes: Mapping[str, float], drain: frozenset[str] = frozenset()
) -> list[tuple[int, str]]:
    """Relocations ``(shard, node)`` that spread shards over ``nodes`` by CPUs.

    Shards on a node in ``drain`` (or on a node that is gone) always move;
    others move only while that lowers the busiest node's load below what
    the move would give the receiving node, so a balanced layout gives no
    relocations and every plan ends.
    """
    targets = {n: c for n, c in nodes.items() if n not in drain}
    if not targets:
        raise ValueError("no node left to move shards to")
    where = dict(shard_nodes)
    plan: list[tuple[int, str]] = []
    for shard in sorted(where):
        if where[shard] not in targets:
            to = most_room(targets, (where[s] for s in where if where[s] in targets))
            where[shard] = to
            plan.append((shard, to))
    for _ in range(len(where) * len(targets)):
        load = Counter(where.values())

        def ratio(n: str, extra: int = 0, load: Counter = load) -> float:
            return (load[n] + extra) / max(targets[n], 1e-9)

        busiest = max(sorted(targets), key=ratio)
        to = min(sorted(targets), key=lambda n: ratio(n, 1))
        if to == busiest or ratio(to, 1) >= ratio(busiest):
            break
        shard = max(s for s in where if where[s] == busiest)
        where[shard] = to
        plan.append((shard, to))
    return _last_move_per_shard(plan, shard_nodes)


def _last_move_per_shard(
    plan: list[tuple[int, str]], before: Mapping[int, str]
) -> list[tuple[int, str]]:
    """One relocation per shard (its final node), in first-move order, none back home."""
    final = dict(plan)
    seen: list[int] = []
    for shard, _ in plan:
        if shard not in seen and final[shard] != before[shard]:
            seen.append(shard)
    return [(s, final[s]) for s in seen]
