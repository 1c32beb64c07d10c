"""Admin routes: catalogue, models, snapshot, counters, audit, and scaling (live moves).

Every route needs a key with the ``admin`` scope; every change is written to
the audit trail with its result, refusals included.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from starlette.requests import Request
from starlette.responses import Response

from actors.replies import Failed
from models.audit import MAX_READ, AuditLog
from models.decisioning.catalog import load_catalog
from models.errors import CatalogError, RtimError, Unavailable, ValidationError
from models.learning.registry import ModelRegistry, scorer_for_version
from serving import schema
from serving.audit import audit
from serving.auth import require
from serving.codec import read_body
from serving.routes.common import API, answer, ingress_of

router = APIRouter(prefix=f"{API}/admin", tags=["admin"], dependencies=[require("admin")])


@router.put(
    "/catalog",
    summary="Replace the catalogue (validated, then swapped on every shard)",
    responses=schema.typed(schema.CATALOG_CHANGED),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_catalog(request: Request) -> Response:
    ing = await ingress_of(request)
    try:
        data = await read_body(request, ing.settings.max_body_bytes, yaml_ok=True)
        if not isinstance(data, dict):
            # Never a path or text for load_catalog to open on the server.
            raise CatalogError("a catalogue must be a mapping (JSON object or YAML)", None)
        # Experiments keep the active catalogue's bucket allocations (fewest moves).
        active = load_catalog(await ing.region.coordinator.get_catalog.remote())
        catalog = await asyncio.to_thread(load_catalog, data, active)  # CatalogError → 422
    except RtimError as exc:
        await audit(request, "catalog.replace", None, f"refused: {exc.code}")
        raise
    result = await ing.region.coordinator.set_catalog.remote(catalog.to_dict())
    failed = [r for r in result["shards"] if "error" in r]
    ing.catalog = catalog
    outcome = f"failed on {len(failed)} shards" if failed else "ok"
    await audit(request, "catalog.replace", catalog.version, outcome)
    return answer(request, {**result, "failed": failed}, 503 if failed else 200)


@router.get("/models", summary="Model versions", responses=schema.typed(schema.MODELS))
async def list_models(request: Request) -> Response:
    ing = await ingress_of(request)
    versions = await ing.region.coordinator.versions.remote()
    try:
        available = ModelRegistry(ing.settings.model_registry).versions()
    except RtimError:
        available = []
    shards = await ing.region.broadcast("versions")
    body = {"active": versions["model_version"], "available": available, "shards": shards}
    return answer(request, body)


@router.post(
    "/models",
    summary="Load and activate a model version on every shard",
    responses=schema.typed(schema.MODEL_CHANGED),
    openapi_extra=schema.body(
        {"type": "object", "required": ["version"], "properties": {"version": {"type": "string"}}}
    ),
)
async def activate_model(request: Request) -> Response:
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not version:
        raise ValidationError('body must be {"version": "<model version>"}', "version")
    assert ing.catalog is not None
    # Load it here first: a model that does not match its manifest is
    # refused before any shard switches.
    try:
        await asyncio.to_thread(
            scorer_for_version, ing.settings.model_registry, version, ing.catalog.group_of
        )
    except RtimError as exc:
        await audit(request, "model.activate", version, f"refused: {exc.code}")
        raise
    result = await ing.region.coordinator.set_model.remote(version)
    failed = [r for r in result["shards"] if "error" in r]
    outcome = f"failed on {len(failed)} shards" if failed else "ok"
    await audit(request, "model.activate", version, outcome)
    return answer(request, {**result, "failed": failed}, 503 if failed else 200)


@router.post(
    "/snapshot",
    summary="Snapshot every shard now and compact its journal",
    responses=schema.typed(schema.SNAPSHOTS),
)
async def snapshot(request: Request) -> Response:
    ing = await ingress_of(request)
    results = await ing.region.broadcast("snapshot", timeout_s=300.0)
    failed = sum(1 for r in results if not isinstance(r, dict) or "error" in r)
    await audit(request, "shards.snapshot", None, f"failed on {failed} shards" if failed else "ok")
    return answer(request, {"shards": results})


@router.get("/audit", summary="The audit trail, newest first", responses=schema.typed(schema.AUDIT))
async def read_audit(request: Request, limit: int = 100, action: str | None = None) -> Response:
    if not 1 <= limit <= MAX_READ:
        raise ValidationError(f"limit must be 1..{MAX_READ}", "limit")
    log = AuditLog(request.app.state.ingress.settings.data_dir)
    return answer(request, {"entries": await asyncio.to_thread(log.tail, limit, action)})


@router.get(
    "/ingress",
    summary="Counters of the ingress replica that answers",
    responses=schema.typed(schema.INGRESS_COUNTERS),
)
async def ingress_stats(request: Request) -> Response:
    ing = await ingress_of(request)
    return answer(request, ing.counters())


@router.get("/shards", summary="Shard statistics", responses=schema.typed(schema.SHARDS))
async def shard_stats(request: Request) -> Response:
    ing = await ingress_of(request)
    stats, identity = await asyncio.gather(
        ing.region.broadcast("stats"), ing.region.identities.broadcast("ping")
    )
    body = {"epoch": ing.region.epoch, "shards": stats,
            "identity_epoch": ing.region.identities.epoch, "identity_shards": identity}  # fmt: skip
    return answer(request, body)


def _count(body: object, name: str) -> int:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f'body must be {{"{name}": <integer>}}', name)
    return value


async def _ask_coordinator(ing: Any, method: str, *args: Any) -> Any:
    """A coordinator call; 503 (not 500) while the coordinator restarts, e.g. after node loss."""
    try:
        return await getattr(ing.region.coordinator, method).remote(*args)
    except (ActorDiedError, ActorUnavailableError, RayActorError):
        raise Unavailable("the shard coordinator is restarting; retry", 2.0) from None


def _outcome(reply: object) -> str:
    return f"refused: {reply.code}" if isinstance(reply, Failed) else "ok"


def _started(request: Request, reply: object) -> Response:
    """A coordinator's refusal as its error, or 202 with the job's progress."""
    if isinstance(reply, Failed):
        raise reply.error()
    return answer(request, reply, 202)


@router.put(
    "/shards",
    summary="Scale to N profile and/or identity shards, moving partitions live "
    "(202; progress at /rebalance)",
    status_code=202,
    responses=schema.typed(schema.MOVE_JOB, "the job started", 202),
    openapi_extra=schema.body(schema.SCALE_REQUEST),
)
async def scale_shards(request: Request) -> Response:
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    names = ("shards", "identity_shards")
    if not isinstance(body, dict) or not body or set(body) - set(names):
        raise ValidationError(
            'body must be {"shards": <integer>} and/or {"identity_shards": <integer>}', "shards"
        )
    counts = {n: _count(body, n) if n in body else None for n in names}
    reply = await _ask_coordinator(ing, "scale", counts["shards"], counts["identity_shards"])
    target = ", ".join(f"{n}={c}" for n, c in counts.items() if c is not None)
    await audit(request, "shards.scale", target, _outcome(reply))
    return _started(request, reply)


@router.post(
    "/moves",
    summary="Move partitions to a shard, live (202; progress at /rebalance)",
    status_code=202,
    responses=schema.typed(schema.MOVE_JOB, "the job started", 202),
    openapi_extra=schema.body(
        {
            "type": "object",
            "required": ["partitions", "to"],
            "properties": {
                "partitions": {"type": "array", "items": {"type": "integer"}},
                "to": {"type": "integer"},
                "identity": {"type": "boolean", "description": "move identity partitions"},
            },
        }
    ),
)
async def move_partitions(request: Request) -> Response:
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    to = _count(body, "to")
    parts = body.get("partitions")
    if (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
    ):
        raise ValidationError("partitions must be a non-empty list of integers", "partitions")
    identity = body.get("identity", False)
    if not isinstance(identity, bool):
        raise ValidationError("identity must be true or false", "identity")
    reply = await _ask_coordinator(ing, "move_partitions", parts, to, identity)
    group = "identity" if identity else "profile"
    await audit(request, "partitions.move", f"{group} {sorted(set(parts))} to {to}",
                _outcome(reply))  # fmt: skip
    return _started(request, reply)


@router.get(
    "/nodes", summary="Live Ray nodes and the shards on each", responses=schema.typed(schema.NODES)
)
async def nodes(request: Request) -> Response:
    ing = await ingress_of(request)
    return answer(request, await _ask_coordinator(ing, "placement"))


@router.post(
    "/rebalance",
    summary="Spread shards over the live nodes, or drain one node (202; progress at GET)",
    status_code=202,
    responses=schema.typed(schema.MOVE_JOB, "the job started", 202),
    openapi_extra=schema.body(schema.REBALANCE_REQUEST),
)
async def rebalance_nodes(request: Request) -> Response:
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    if not isinstance(body, dict) or set(body) - {"drain"}:
        raise ValidationError('body must be {} or {"drain": "<node id>"}', "drain")
    drain = body.get("drain")
    if drain is not None and (not isinstance(drain, str) or not 1 <= len(drain) <= 128):
        raise ValidationError("drain must be a node id (GET /v1/admin/nodes lists them)", "drain")
    reply = await _ask_coordinator(ing, "rebalance_nodes", drain)
    await audit(request, "nodes.rebalance", drain, _outcome(reply))
    return _started(request, reply)


@router.get(
    "/rebalance",
    summary="Progress of the running (or last) scaling or move job",
    responses=schema.typed(schema.MOVE_JOB),
)
async def rebalance_progress(request: Request) -> Response:
    ing = await ingress_of(request)
    return answer(request, await _ask_coordinator(ing, "rebalance_progress"))
