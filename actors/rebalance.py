"""``Rebalancer``: the coordinator's side of live partition moves and scaling.

One move is one hand-off of some partitions from a source shard to a
target shard, under one new map epoch (``actors/handoff.py`` has the shard
side). The coordinator persists the *plan* (the next map) before any shard
acts, so a coordinator that dies mid-move resumes it when it comes back:

1. persist ``move = {map: next, source, target, partitions}``; the topology
   now answers the next map, so regions route the moving partitions to the
   target, which refuses them (``StaleEpoch``) until it has imported them;
   regions hold those calls and retry;
2. every other shard adopts the next map (its own partitions do not change);
3. the source hands off (journals the export, stops serving the partitions);
4. the target takes over (journals the import, then serves them);
5. persist ``map = next, move = None``; the source forgets its export.

Every step is idempotent on the shards, so a step is simply repeated until
it succeeds: a killed shard restarts (Ray restarts shard actors without
limit) and answers from its journal. Moves run one at a time (at most one
hand-off in flight, so at most ``move_partitions`` partitions wait at once).

Profile shards and identity shards are two :class:`ShardGroup` s, each with
its own map, epoch and persisted move; the same steps move partitions of
either (identity shards hand off identifier links instead of profiles).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.replies import Failed, ShardUnavailable, StaleEpoch
from models.partitioning import Move, PartitionMap, after_move, plan_moves

log = logging.getLogger("rtim.rebalance")

STEP_TIMEOUT_S = 30.0  # one shard step (a hand-off of many profiles takes a while)
STEP_DEADLINE_S = 300.0  # give up on a step after this long; the plan stays persisted


class MoveStalled(RuntimeError):
    """A move step did not succeed in time; the persisted plan resumes it later."""


@dataclass
class ShardGroup:
    """Shards of one kind that partitions move between, with their map and move."""

    kind: str  # "profile" or "identity": the label in messages, progress and state
    map: PartitionMap
    move: dict | None  # the persisted plan of a move in flight (see the module doc)
    start: Callable[[int, str | None], Any]  # index, node (or None) -> actor handle
    directory: Callable[[int], Path]  # index -> the shard's data directory
    handles: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "shard" if self.kind == "profile" else f"{self.kind} shard"

    def routing_map(self) -> PartitionMap:
        """The map requests follow: the planned one while a move is in flight."""
        return PartitionMap.from_dict(self.move["map"]) if self.move else self.map

    def size(self) -> int:
        """Shards needed to run: the map's, or more while a move to a new one is half done."""
        return max(self.map.shards, self.routing_map().shards)


@dataclass
class Progress:
    """What ``GET /v1/admin/rebalance`` shows."""

    running: bool = False
    target_shards: int | None = None
    target_identity_shards: int | None = None
    moves_total: int = 0
    moves_done: int = 0
    partitions_moved: int = 0
    current: dict | None = None  # the move in flight
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    history: list[dict] = field(default_factory=list)  # last moves, with their durations

    def to_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "target_shards": self.target_shards,
            "target_identity_shards": self.target_identity_shards,
            "moves_total": self.moves_total,
            "moves_done": self.moves_done,
            "partitions_moved": self.partitions_moved,
            "current": self.current,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "last_moves": self.history[-10:],
        }


async def until_done(what: str, step: Callable[[], Awaitable[Any]]) -> Any:
    """Repeat an idempotent shard step until it answers, with backoff, boundedly."""
    deadline = time.monotonic() + STEP_DEADLINE_S
    delay = 0.1
    while True:
        try:
            result = await asyncio.wait_for(step(), STEP_TIMEOUT_S)
        except Exception as exc:  # the shard is restarting (killed), or slow
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(result, Failed):
                raise MoveStalled(f"{what}: {result.message}")  # a bug, not a crash: stop
            if not isinstance(result, ShardUnavailable | StaleEpoch):
                return result
            reason = repr(result)
        if time.monotonic() + delay > deadline:
            raise MoveStalled(f"{what} did not succeed within {STEP_DEADLINE_S:.0f}s: {reason}")
        log.warning("%s: %s; retrying", what, reason)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def target_map(current: PartitionMap, shards: int) -> PartitionMap:
    """Where scaling to ``shards`` ends: equal numbers of partitions, fewest moves."""
    return current.rebalanced(shards)


def moves_for(current: PartitionMap, shards: int, per_move: int) -> list[Move]:
    return plan_moves(current, target_map(current, shards), per_move)


def next_map(current: PartitionMap, move: Move, shards: int) -> PartitionMap:
    return after_move(current, move, max(shards, current.shards))
