"""``ShardCoordinator``: creates the shards and owns the cluster-wide state.

One named, detached coordinator per deployment. It owns the partition map
of profile shards and the one of identity shards (each with its epoch), the
active catalogue and the active model version, persists them in
``<data_dir>/coordinator.json`` (written atomically), and pushes activations
to every shard.

The map is the truth about where profiles live: a restart uses the stored
map, never a fresh one, so a data directory created with N shards keeps
serving every customer whatever ``shards`` says now. ``shards: 0`` keeps the
stored count; another explicit count is reached after start-up by live
partition moves (:func:`rescale_to`, ``actors/rebalance.py``); a changed
partition count is refused (:func:`layout_conflict`). The identity map is
kept the same way and changes only by ``rtim scale --identity-shards N``.

Ingress replicas ask it for the topology (map + shard handles) once, cache
it, and ask again only when a shard says their epoch is stale or a decision
reports a catalogue they do not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.identity import IdentityShard, identity_dir, identity_name
from actors.nodes import (
    SHARD_CPUS,
    all_live_nodes,
    drain_node,
    draining_nodes,
    head_node,
    live_nodes,
)
from actors.rebalance import (
    STEP_TIMEOUT_S,
    MoveStalled,
    Progress,
    ShardGroup,
    moves_for,
    next_map,
    until_done,
)
from actors.replies import Failed, ShardUnavailable
from actors.shard import NAMESPACE, ProfileShard, shard_dir, shard_name
from models.atomic_file import replace_file
from models.decisioning.catalog import load_catalog
from models.errors import RtimError
from models.learning.registry import ModelRegistry
from models.partitioning import Move, PartitionMap
from models.placement import most_room, spread_plan
from models.settings import Settings

log = logging.getLogger("rtim.coordinator")

COORDINATOR_NAME = "rtim-coordinator"
STATE_FILE = "coordinator.json"
RELOCATE_ATTEMPTS = 3  # starts of a shard on the node asked for, before taking where it ran


def load_state(data_dir: str) -> dict:
    """What ``coordinator.json`` holds ({} for a new data directory)."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def stored_map(settings: Settings) -> PartitionMap | None:
    """The data directory's partition map, or None for a new data directory.

    A directory written before the map was persisted has ``shard-N``
    directories and no map: it was laid out round-robin over that many shards.
    """
    saved = load_state(settings.data_dir).get("map")
    if saved:
        return PartitionMap.from_dict(saved)
    return _round_robin(settings, "shard-", None)


def stored_identity_map(settings: Settings) -> PartitionMap | None:
    """The data directory's identity partition map, or None for a new data directory.

    Before identity partitions could move, the state kept only a count
    (``identity_shards``) and keys went to ``partition % count``: that is
    the round-robin map over the count.
    """
    state = load_state(settings.data_dir)
    if state.get("identity_map"):
        return PartitionMap.from_dict(state["identity_map"])
    return _round_robin(settings, "identity-", state.get("identity_shards"))


def _round_robin(settings: Settings, prefix: str, count: int | None) -> PartitionMap | None:
    """The map of a directory written before maps were stored: ``count`` or the
    ``<prefix>N`` directories' count shards, round-robin."""
    if not count:
        names = [d.name.removeprefix(prefix) for d in Path(settings.data_dir).glob(f"{prefix}*")]
        indexes = [int(n) for n in names if n.isdigit()]
        count = max(indexes) + 1 if indexes else None
    return PartitionMap.initial(settings.partitions, count) if count else None


def layout_conflict(settings: Settings) -> str | None:
    """Why these settings cannot serve this data directory, or None.

    Partitions never change (customers would rehash).
    """
    pmap = stored_map(settings)
    if pmap is None:
        return None
    where = f"data directory {settings.data_dir}"
    if settings.partitions != pmap.partitions:
        return (
            f"{where} was created with {pmap.partitions} partitions but partitions is "
            f"{settings.partitions}; partitions cannot change (customers would rehash): "
            f"set partitions: {pmap.partitions}"
        )
    return None


def rescale_to(settings: Settings) -> int | None:
    """The shard count to move partitions to after start-up, if it differs from the stored one.

    ``shards: 0`` keeps the stored count: a data directory moved to a
    machine with another number of cores keeps its layout.
    """
    pmap = stored_map(settings)
    if pmap is None or not settings.shards or settings.shards == pmap.shards:
        return None
    return settings.shards


def shard_count(settings: Settings) -> int:
    """Settings' shard count, or one per CPU Ray sees (at least one)."""
    if settings.shards:
        return settings.shards
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(cpus, settings.partitions))


class ShardCoordinatorImpl:
    def __init__(self, settings: dict) -> None:
        self.settings = Settings.from_dict(settings)
        self.state_path = Path(self.settings.data_dir) / STATE_FILE
        saved = self._load_state()
        self.catalog: dict = saved.get("catalog") or load_catalog(self.settings.catalog).to_dict()
        self.model_version: str = saved.get("model_version") or self.settings.model_version
        if not self.model_version:
            # Pin "the newest" now: a shard restarted later must load the same
            # version, not whatever is newest in the registry by then.
            self.model_version = newest_model(self.settings)
        # The stored map, never a fresh one: a fresh map over another shard
        # count would leave some partitions' data unserved.
        pmap = stored_map(self.settings) or PartitionMap.initial(
            self.settings.partitions, shard_count(self.settings)
        )
        # A move planned but not finished when the coordinator stopped: resumed
        # by the first call that needs the topology (actors/rebalance.py).
        self.profile = ShardGroup("profile", pmap, saved.get("move"), self._shard,
                                  lambda i: shard_dir(self.settings.data_dir, i))  # fmt: skip
        id_map = stored_identity_map(self.settings) or PartitionMap.initial(
            self.settings.partitions, pmap.shards
        )
        self.identity = ShardGroup("identity", id_map, saved.get("identity_move"),
                                   self._identity_shard,
                                   lambda i: identity_dir(self.settings.data_dir, i))  # fmt: skip
        self.groups = (self.profile, self.identity)
        self._save_state()
        self.progress = Progress()
        self.job: asyncio.Task | None = None  # the running scaling or move job
        self.resumed: asyncio.Task | None = None  # what this coordinator did first
        for g in self.groups:
            g.handles = [g.start(i, None) for i in range(g.size())]

    # The profile group under the names the rest of the coordinator uses.
    @property
    def map(self) -> PartitionMap:
        return self.profile.map

    @map.setter
    def map(self, value: PartitionMap) -> None:
        self.profile.map = value

    @property
    def shards(self) -> list[Any]:
        return self.profile.handles

    @shards.setter
    def shards(self, value: list[Any]) -> None:
        self.profile.handles = value

    @property
    def identity_shards(self) -> list[Any]:
        return self.identity.handles

    def _load_state(self) -> dict:
        return load_state(self.settings.data_dir)

    def _save_state(self) -> None:
        data = {
            "catalog": self.catalog,
            "model_version": self.model_version,
            "map": self.profile.map.to_dict(),
            "move": self.profile.move,
            "identity_map": self.identity.map.to_dict(),
            "identity_move": self.identity.move,
            # The count alone, for readers of the state from before identity moves.
            "identity_shards": self.identity.map.shards,
        }
        replace_file(self.state_path, json.dumps(data).encode())

    @staticmethod
    def _options(name: str, node: str | None = None) -> dict[str, Any]:
        """Shard actors: named, detached, restarted without limit, spread over nodes.

        With ``node``: on that node while it lives (soft affinity: a shard
        whose node is lost restarts on another one, as without it). Ray
        honours the affinity only because the actor asks for some CPU
        (``SHARD_CPUS``, ``actors/nodes.py``); draining nodes are left out.
        """
        strategy: Any = "SPREAD"
        if node is not None:
            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
        return {
            "name": name,
            "namespace": NAMESPACE,
            "get_if_exists": True,
            "lifetime": "detached",
            "max_restarts": -1,
            "max_task_retries": 0,
            "num_cpus": SHARD_CPUS,
            "max_concurrency": 1000,
            "scheduling_strategy": strategy,
        }

    def _shard(self, index: int, node: str | None = None) -> Any:
        return ProfileShard.options(**self._options(shard_name(index), node)).remote(
            index, self.settings.to_dict(), self.map.to_dict(), self.catalog, self.model_version
        )

    def _identity_shard(self, index: int, node: str | None = None) -> Any:
        return IdentityShard.options(**self._options(identity_name(index), node)).remote(
            index, self.settings.to_dict(), self.settings.identity or None,
            self.identity.map.to_dict(),
        )  # fmt: skip

    async def topology(self) -> dict[str, Any]:
        """The profile and identity maps and shard handles (index-aligned with each map).

        This is the one way to find shard actors: ingress replicas and shards
        ask it and cache the answer.
        """
        self._resume()
        return {
            "map": self.profile.routing_map().to_dict(),
            "shards": self.shards,
            "identity_map": self.identity.routing_map().to_dict(),
            "identity_shards": self.identity_shards,
        }

    async def wait_ready(self, timeout_s: float = 60.0) -> list[dict]:
        self._resume()
        pings = await asyncio.wait_for(
            asyncio.gather(*(s.ping.remote() for s in [*self.shards, *self.identity_shards])),
            timeout_s,
        )
        return list(pings[: len(self.shards)])

    async def get_catalog(self) -> dict:
        return self.catalog

    async def versions(self) -> dict[str, Any]:
        return {"catalog_version": self.catalog.get("version"), "model_version": self.model_version}

    async def _broadcast(self, method: str, arg: Any) -> list[dict]:
        """Every shard's answer; a refusal becomes ``{"shard": i, "error": message}``."""
        results = await asyncio.gather(*(getattr(s, method).remote(arg) for s in self.shards))
        return [r if isinstance(r, dict) else {"shard": i, "error": _reason(r)}
                for i, r in enumerate(results)]  # fmt: skip

    async def set_catalog(self, data: dict) -> dict[str, Any]:
        """Persist and push a catalogue (already validated by the caller)."""
        self.catalog = data
        self._save_state()
        results = await self._broadcast("set_catalog", data)
        return {"catalog_version": data.get("version"), "shards": results}

    async def set_model(self, version: str) -> dict[str, Any]:
        """Activate a model version on every shard; persist it if all took it."""
        results = await self._broadcast("set_model", version)
        if all("model_version" in r for r in results):
            self.model_version = version
            self._save_state()
        return {"model_version": version, "shards": results}

    # -- partition moves and scaling (actors/rebalance.py) --------------------------------

    def _resume(self) -> None:
        """Once per coordinator: finish a half-done move, or bring every shard to the map.

        Called first by every public method that reads or changes the layout:
        a restarted coordinator may be asked to start a job before anyone
        asked for the topology, and the resumed work must then be *the* job
        (or run before it), never a second job beside it: two jobs finishing
        moves at once overwrite each other's persisted plan and map, and
        shards end at an epoch the coordinator never gives out (the
        multi-node scenario's "events never acknowledged again").
        """
        if self.resumed is None:
            if self._moving():
                self.resumed = self._start(self._run_job([]), self._job_progress([]))
            else:
                self.resumed = asyncio.get_running_loop().create_task(self._sync_shards())

    def _moving(self) -> bool:
        return any(g.move for g in self.groups)

    def _start(self, job: Coroutine[Any, Any, None], progress: Progress) -> asyncio.Task:
        """Run ``job`` as the one scaling or move job (there is never a second).

        Its progress is in place before the task first runs: a progress
        request in between (the first call a restarted coordinator answers
        may be one) must say "running", not the previous job's "done".
        """
        if self._busy():
            job.close()
            raise RuntimeError("a scaling or move job is running already")
        progress.started_at = time.time()
        self.progress = progress
        self.job = asyncio.get_running_loop().create_task(job)
        return self.job

    def _job_progress(self, plan: list[tuple[ShardGroup, list[Move], int | None]]) -> Progress:
        """The progress of a job running ``plan`` after any half-done moves."""
        total = sum(len(moves) for _, moves, _ in plan) + sum(bool(g.move) for g in self.groups)
        targets = {g.kind: n for g, _, n in plan}
        return Progress(True, targets.get("profile"), targets.get("identity"), moves_total=total)

    async def _sync_shards(self) -> None:
        """After a crash between persisting a map and pushing it: push it, forget old exports."""
        for g in self.groups:
            try:
                await self._adopt_everywhere(g, g.map.to_dict())
                pings = await asyncio.gather(*(s.ping.remote() for s in g.handles))
                await asyncio.gather(*(g.handles[i].acknowledge_hand_off.remote(e)
                                       for i, ping in enumerate(pings) for e in ping["outbox"]
                                       if e <= g.map.epoch))  # fmt: skip
            except (MoveStalled, ray.exceptions.RayError) as exc:
                log.error("could not bring every %s to map epoch %s: %s",
                          g.label, g.map.epoch, exc)  # fmt: skip

    def _busy(self) -> bool:
        return self.job is not None and not self.job.done()

    def _refusal(self, **counts: int | None) -> Failed | None:
        """Why a scaling or move job cannot start now (``counts``: shards asked for, by name)."""
        self._resume()
        if self._moving() and not self._busy():  # a move that stalled earlier: try it again
            self._start(self._run_job([]), self._job_progress([]))
        if self._busy() or self._moving():
            return Failed(
                "move_in_progress",
                "a partition move is running; wait for it (GET /v1/admin/rebalance) and try again",
            )
        for name, n in counts.items():
            if n is not None and not 1 <= n <= self.map.partitions:
                return Failed(
                    "invalid_request",
                    f"{name} must be between 1 and the number of "
                    f"partitions ({self.map.partitions}), got {n}",
                    name,
                )
        return None

    async def scale(
        self, shards: int | None, identity_shards: int | None = None
    ) -> dict[str, Any] | Failed:
        """Start moving partitions so that each group's shards hold about equal numbers of them.

        ``shards``: profile shards, ``identity_shards``: identity shards (None: as they are).
        """
        refused = self._refusal(shards=shards, identity_shards=identity_shards)
        if refused:
            return refused
        k = self.settings.move_partitions
        plan = [(g, moves_for(g.map, n, k), n)
                for g, n in ((self.profile, shards), (self.identity, identity_shards))
                if n is not None]  # fmt: skip
        self._start(self._run_job(plan), self._job_progress(plan))
        await asyncio.sleep(0)
        return self.progress.to_dict()

    async def move_partitions(
        self, partitions: list[int], to: int, identity: bool = False
    ) -> dict[str, Any] | Failed:
        """Start moving ``partitions`` (each from its current owner) to shard ``to``.

        ``identity``: identity partitions between identity shards.
        """
        refused = self._refusal()
        if refused:
            return refused
        g = self.identity if identity else self.profile
        unknown = [p for p in partitions if not 0 <= p < g.map.partitions]
        if unknown:
            return Failed("not_found", f"no such partition(s): {unknown}", "partitions")
        if not 0 <= to < g.map.shards:
            return Failed("not_found", f"no such {g.label}: {to} (there are {g.map.shards})", "to")
        sources: dict[int, list[int]] = {}
        for p in sorted(set(partitions)):
            if g.map.owners[p] != to:
                sources.setdefault(g.map.owners[p], []).append(p)
        k = self.settings.move_partitions
        moves = [Move(src, to, tuple(ps[i : i + k]))
                 for src, ps in sorted(sources.items()) for i in range(0, len(ps), k)]  # fmt: skip
        plan = [(g, moves, None)]
        self._start(self._run_job(plan), self._job_progress(plan))
        await asyncio.sleep(0)
        return self.progress.to_dict()

    async def rebalance_progress(self) -> dict[str, Any]:
        self._resume()
        return {
            **self.progress.to_dict(),
            "map": self.profile.routing_map().to_dict(),
            "identity_map": self.identity.routing_map().to_dict(),
            "coordinator_pid": os.getpid(),
        }

    async def _run_job(self, plan: list[tuple[ShardGroup, list[Move], int | None]]) -> None:
        """For each group in ``plan``: after a half-done move, run its moves one after
        another, adding shards first and retiring shards last."""
        p = self.progress
        resuming = [g for g in self.groups if g.move]
        resumed = self.resumed
        if resumed is not None and resumed is not asyncio.current_task():
            await asyncio.wait([resumed])  # the start-up sync pushes the map first
        try:
            for g in resuming:
                await self._finish_move(g)
                p.moves_done += 1
            for g, moves, shards in plan:
                await self._run_moves(g, moves, shards)
        except MoveStalled as exc:
            p.error = str(exc)
            log.error("rebalance stalled: %s", exc)
        except Exception as exc:  # a bug: say so in the progress, never "done" silently
            p.error = f"{type(exc).__name__}: {exc}"
            log.exception("rebalance failed")
        finally:
            p.running = False
            p.current = None
            p.finished_at = time.time()

    async def _run_moves(self, g: ShardGroup, moves: list[Move], shards: int | None) -> None:
        """``moves`` of group ``g`` one at a time; then ``shards`` shards (if given)."""
        if shards is not None and shards > len(g.handles):
            await self._add_shards(g, shards)
        for move in moves:
            g.move = {
                "map": next_map(g.map, move, shards or g.map.shards).to_dict(),
                "source": move.source,
                "target": move.target,
                "partitions": list(move.partitions),
            }
            self._save_state()
            await self._finish_move(g)
            self.progress.moves_done += 1
        if shards is not None and shards < g.map.shards:
            await self._retire_shards(g, shards)
        elif shards is not None and shards > g.map.shards:
            g.map = PartitionMap(g.map.epoch + 1, g.map.owners, shards)
            self._save_state()
            await self._adopt_everywhere(g, g.map.to_dict())

    async def _finish_move(self, g: ShardGroup) -> None:
        """Steps 2-5 of group ``g``'s persisted move (each repeated until it succeeds)."""
        assert g.move is not None
        m = g.move
        nxt, source, target, parts = m["map"], m["source"], m["target"], m["partitions"]
        self.progress.current = {
            "group": g.kind,
            "epoch": nxt["epoch"],
            "source": source,
            "target": target,
            "partitions": parts,
        }
        started = time.monotonic()
        await self._step("planned")
        others = [i for i in range(len(g.handles)) if i not in (source, target)]
        await self._adopt_everywhere(g, nxt, others)
        await self._step("others_adopted")
        export = await until_done(
            f"{g.label} {source} hand-off",
            lambda: g.handles[source].hand_off.remote(nxt, parts, target),
        )
        await self._step("handed_off")
        if export is not None:  # None: acknowledged already, so taken over already
            await until_done(
                f"{g.label} {target} take-over",
                lambda: g.handles[target].take_over.remote(nxt, parts, export),
            )
        await self._step("taken_over")
        g.map = PartitionMap.from_dict(nxt)
        g.move = None
        self._save_state()
        await until_done(
            f"{g.label} {source} hand-off acknowledgement",
            lambda: g.handles[source].acknowledge_hand_off.remote(nxt["epoch"]),
        )
        self.progress.partitions_moved += len(parts)
        self.progress.history.append(
            {
                **self.progress.current,
                "step": "done",
                "seconds": round(time.monotonic() - started, 3),
                "bytes": len(export or b""),
            }
        )

    async def _step(self, name: str) -> None:
        """Record the step reached; pause after it if ``move_pause_s`` says so (tests, demos)."""
        assert self.progress.current is not None
        self.progress.current["step"] = name
        if self.settings.move_pause_s:
            await asyncio.sleep(self.settings.move_pause_s)

    async def _adopt_everywhere(
        self, g: ShardGroup, pmap: dict, indexes: list[int] | None = None
    ) -> None:
        todo = range(len(g.handles)) if indexes is None else indexes
        await asyncio.gather(
            *(
                until_done(
                    f"{g.label} {i} adopting map {pmap['epoch']}",
                    lambda i=i: g.handles[i].adopt_map.remote(pmap),
                )
                for i in todo
            )
        )

    async def _add_shards(self, g: ShardGroup, shards: int) -> None:
        """New, empty shards (owning nothing yet); profile shards each on the node
        with the most room."""
        nodes = live_nodes() if g is self.profile else {}
        hosted = list((await self._shard_nodes()).values()) if nodes else []
        asked: dict[int, str] = {}
        for i in range(len(g.handles), shards):
            node = most_room(nodes, hosted) if nodes else None
            g.handles.append(g.start(i, node))
            hosted.append(node or "")
            if node is not None:
                asked[i] = node
        pings = await until_done(
            f"new {g.label}s starting",
            lambda: asyncio.gather(*(s.ping.remote() for s in g.handles)),
        )
        for i, node in asked.items():  # not where it was asked to be: start it again there
            if pings[i]["node"] != node:
                log.warning("new shard %d asked for node %s, runs on %s", i, node, pings[i]["node"])
                await self._relocate(i, node, frozenset(draining_nodes()))

    async def _retire_shards(self, g: ShardGroup, shards: int) -> None:
        """Shards ``shards..`` own nothing now: stop them and set their directories aside."""
        g.map = PartitionMap(g.map.epoch + 1, g.map.owners, shards)
        self._save_state()  # first: a coordinator restarted now pushes it (_sync_shards)
        await self._adopt_everywhere(g, g.map.to_dict(), list(range(shards)))
        retired, g.handles = g.handles[shards:], g.handles[:shards]
        for i, handle in enumerate(retired, start=shards):
            ray.kill(handle, no_restart=True)
            old = g.directory(i)
            if old.exists():
                # Kept, not deleted: everything in it was handed off and acknowledged.
                old.rename(old.with_name(f"{old.name}.retired-epoch-{g.map.epoch}"))

    # -- shard placement over nodes (models/placement.py) --------------------------------

    async def _shard_nodes(self) -> dict[int, str]:
        """Where each profile shard runs now (a shard that does not answer: left out)."""
        pings = await asyncio.gather(
            *(asyncio.wait_for(s.ping.remote(), STEP_TIMEOUT_S) for s in self.shards),
            return_exceptions=True,
        )
        return {i: p["node"] for i, p in enumerate(pings) if isinstance(p, dict)}

    async def placement(self) -> dict[str, Any]:
        """The live nodes (id, CPUs, shards on it, draining or not) and each shard's node."""
        self._resume()
        where = await self._shard_nodes()
        cpus = all_live_nodes()
        draining = draining_nodes()
        on = {n: sorted(i for i, w in where.items() if w == n) for n in cpus}
        return {
            "nodes": [
                {"node": n, "cpus": cpus[n], "shards": on[n], "draining": n in draining}
                for n in sorted(on)
            ],
            "shards": [{"shard": i, "node": where.get(i)} for i in range(len(self.shards))],
        }

    async def rebalance_nodes(self, drain: str | None = None) -> dict[str, Any] | Failed:
        """Start spreading shards over the live nodes (all off ``drain`` if given).

        A shard moves by restarting it on the other node on the same data
        directory (the data directory every node shares): no partition
        changes owner, nothing is copied, and a shard's journal replay is
        what a node loss costs anyway. The map's epoch then bumps, so every
        region fetches the new actor handle.

        ``drain`` is first marked draining in Ray's GCS (``actors/nodes.py``):
        from then on no scheduler starts a shard there, whether it is
        relocated, restarted after another node's loss or new. Shards on any
        draining node (an earlier drain that stopped half-way) always move.
        """
        refused = self._refusal()
        if refused:
            return refused
        nodes = live_nodes()  # the nodes that can take a shard: not draining
        if drain is not None and drain not in all_live_nodes():
            return Failed("not_found", f"no live node {drain!r} (see GET /v1/admin/nodes)", "drain")
        where = await self._shard_nodes()
        if len(where) < len(self.shards):
            down = sorted(set(range(len(self.shards))) - set(where))
            return Failed("unavailable", f"shards {down} are not answering; retry", None)
        leaving = frozenset(draining_nodes() | ({drain} if drain else set()))
        try:
            plan = spread_plan(where, nodes, leaving)
        except ValueError as exc:
            return Failed("invalid_request", f"cannot drain {drain}: {exc}", "drain")
        if drain is not None and drain == head_node():
            return Failed("invalid_request", "the head node runs Ray's GCS; it is never drained",
                          "drain")  # fmt: skip
        if drain is not None:  # one-way: only once the plan is known to have somewhere to go
            refusal = await asyncio.to_thread(drain_node, drain, "rtim rebalance --drain")
            if refusal:
                return Failed("invalid_request", f"Ray refused to drain {drain}: {refusal}",
                              "drain")  # fmt: skip
        self._start(
            self._relocate_all(plan, leaving),
            Progress(True, moves_total=len(plan)),
        )
        await asyncio.sleep(0)
        return self.progress.to_dict()

    async def _relocate_all(self, plan: list[tuple[int, str]], drain: frozenset[str]) -> None:
        p = self.progress
        try:
            for index, node in plan:
                started = time.monotonic()
                p.current = {"shard": index, "node": node, "step": "restarting"}
                landed = await self._relocate(index, node, drain)
                p.moves_done += 1
                p.history.append({**p.current, "step": "done", "landed": landed,
                                  "seconds": round(time.monotonic() - started, 3)})  # fmt: skip
        except Exception as exc:
            p.error = f"{type(exc).__name__}: {exc}"
            log.exception("shard relocation failed")
        finally:
            p.running, p.current, p.finished_at = False, None, time.time()

    async def _relocate(self, index: int, node: str, avoid: frozenset[str] = frozenset()) -> str:
        """Stop shard ``index`` and start it again on ``node``; bump the map's epoch.

        Returns the node it runs on now. Soft node affinity is exact for an
        actor that asks for some CPU (``actors/nodes.py``), so a shard lands
        elsewhere only when ``node`` died or started draining meanwhile; the
        landing is checked anyway and the start repeated, ``RELOCATE_ATTEMPTS``
        times at most, and it must not stay on a node in ``avoid`` (draining).

        Crash safety: the data directory is the shard's state, so a
        coordinator that dies anywhere here leaves at worst a stopped shard,
        which the restarted coordinator starts again by name (elsewhere).
        """
        landed = ""
        for _attempt in range(RELOCATE_ATTEMPTS):
            await self._stop_shard(index)
            self.shards[index] = self._shard(index, node)
            ping = await until_done(
                f"shard {index} starting on {node}", self.shards[index].ping.remote
            )
            landed = ping["node"]
            if landed == node or node not in live_nodes():
                break
            log.warning("shard %d asked for node %s, runs on %s; again", index, node, landed)
        self.map = PartitionMap(self.map.epoch + 1, self.map.owners, self.map.shards)
        self._save_state()
        await self._adopt_everywhere(self.profile, self.map.to_dict())
        if landed in avoid:
            raise MoveStalled(f"shard {index} keeps starting on node {landed}; retry the drain")
        return landed

    async def _stop_shard(self, index: int) -> None:
        """Kill shard ``index`` for good and wait until Ray says so (its name is free then)."""
        old = self.shards[index]
        ray.kill(old, no_restart=True)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                await asyncio.wait_for(old.ping.remote(), 5.0)
            except ray.exceptions.ActorDiedError:
                return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise MoveStalled(f"shard {index} did not stop within {STEP_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.1)


ShardCoordinator = ray.remote(ShardCoordinatorImpl)


def _reason(reply: Any) -> str:
    if isinstance(reply, ShardUnavailable):
        return reply.reason
    if isinstance(reply, Failed):
        return reply.message
    return repr(reply)


def newest_model(settings: Settings) -> str:
    """The registry's newest version, or "" (prior scorer) when there is none."""
    try:
        return ModelRegistry(settings.model_registry).latest_version() or ""
    except RtimError:
        return ""


def get_or_create_coordinator(settings: Settings) -> Any:
    return ShardCoordinator.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        # Some CPU, as shards ask: a drained node hosting the coordinator stays up
        # (Ray stops a drained node once nothing holding resources runs on it)
        # until it is removed, instead of taking the coordinator down mid-job.
        num_cpus=SHARD_CPUS,
    ).remote(settings.to_dict())
