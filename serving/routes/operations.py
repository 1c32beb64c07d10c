"""Operations routes: liveness, readiness, the no-op baseline, the active catalogue."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from serving import schema
from serving.auth import require
from serving.routes.common import API, answer, ingress_of

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive", responses=schema.typed(schema.STATUS))
async def healthz(request: Request) -> Response:
    return answer(request, {"status": "ok"})


@router.get("/readyz", summary="Every shard answers", responses=schema.typed(schema.READY))
async def readyz(request: Request) -> Response:
    ing = await ingress_of(request)
    pings = await ing.region.ping_all()
    down = [i for i, p in enumerate(pings) if p is None]
    degraded = {
        i: p["degraded"] or p["model_error"]
        for i, p in enumerate(pings)
        if p and (p["degraded"] or p.get("model_error"))
    }
    id_pings = await ing.identity.ping_all()
    id_down = [i for i, p in enumerate(id_pings) if p is None]
    id_degraded = {i: p["degraded"] for i, p in enumerate(id_pings) if p and p["degraded"]}
    ok = not (down or degraded or id_down or id_degraded)
    body = {
        "status": "ready" if ok else "unavailable",
        "shards": len(pings),
        "down": down,
        "degraded": degraded,
        "identity_down": id_down,
        "identity_degraded": id_degraded,
        "epoch": ing.region.epoch,
    }
    return answer(request, body, 200 if ok else 503)


# Any valid key: the benchmark baseline pays the same auth cost as a decide.
@router.get(
    "/noop",
    summary="Does nothing (benchmark baseline)",
    dependencies=[require(None)],
    responses=schema.typed(schema.NOOP),
)
async def noop() -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


@router.get(
    f"{API}/catalog",
    tags=["catalogue"],
    summary="The active catalogue",
    dependencies=[require(None)],
    responses=schema.typed(schema.CATALOG),
)
async def get_catalog(request: Request) -> Response:
    ing = await ingress_of(request)
    return answer(request, await ing.region.coordinator.get_catalog.remote())
