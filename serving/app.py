"""The HTTP API: a Ray Serve deployment with a FastAPI ingress.

Replicas are stateless: they validate and decode requests, route them to
the owning :class:`~actors.shard.ProfileShard` through a
:class:`~serving.region.ShardRegion`, and encode the answer. All state lives
in the shards.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from models.errors import NotFound, RtimError, ValidationError
from models.events import MAX_ID_LEN, parse_event_batch
from models.settings import Settings
from serving import schema
from serving.codec import encode, read_body, wants_msgpack
from serving.errors import (
    handle_http_error,
    handle_request_validation,
    handle_rtim_error,
    handle_unexpected,
)
from serving.region import ShardRegion

API_VERSION = "v1"

api = FastAPI(
    title="RTIM decision server",
    version="0.1.0",
    description=(
        "Real-time next-best-action decisions from live customer profiles held in "
        "sharded Ray actors. Bodies are JSON, or msgpack with "
        "`Content-Type: application/msgpack`. Errors are "
        '`{"error": {"code", "message", "field"}}`.'
    ),
)
api.add_exception_handler(RtimError, handle_rtim_error)
api.add_exception_handler(StarletteHTTPException, handle_http_error)
api.add_exception_handler(RequestValidationError, handle_request_validation)
api.add_exception_handler(Exception, handle_unexpected)


def _customer_id(value: str) -> str:
    if not value or len(value) > MAX_ID_LEN:
        raise ValidationError(f"customer_id must be 1..{MAX_ID_LEN} characters", "customer_id")
    return value


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=5,
)
@serve.ingress(api)
class Ingress:
    """One stateless ingress replica."""

    def __init__(self, settings: dict) -> None:
        self.settings = Settings.from_dict(settings)
        self.region = ShardRegion(self.settings)
        self._started = False

    async def _region(self) -> ShardRegion:
        if not self._started:
            await self.region.start()
            self._started = True
        return self.region

    # -- operations ---------------------------------------------------------------

    @api.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz(self) -> Response:
        return encode({"status": "ok"}, False)

    @api.get("/readyz", tags=["operations"], summary="Every shard answers")
    async def readyz(self, request: Request) -> Response:
        region = await self._region()
        pings = await region.ping_all()
        down = [i for i, p in enumerate(pings) if p is None]
        degraded = {i: p["degraded"] for i, p in enumerate(pings) if p and p["degraded"]}
        ok = not down and not degraded
        body = {
            "status": "ready" if ok else "unavailable",
            "shards": len(pings),
            "down": down,
            "degraded": degraded,
            "epoch": region.map.epoch if region.map else None,
        }
        return encode(body, wants_msgpack(request), 200 if ok else 503)

    @api.get("/noop", tags=["operations"], summary="Does nothing (benchmark baseline)")
    async def noop(self) -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    # -- events -------------------------------------------------------------------

    @api.post(
        f"/{API_VERSION}/events",
        tags=["events"],
        summary="Record customer events",
        openapi_extra=schema.body(
            schema.EVENTS_BODY,
            "A batch is validated whole: one invalid event rejects the batch and "
            "nothing of it is applied. Answered after every owning shard applied its part.",
        ),
    )
    async def events(self, request: Request) -> Response:
        s = self.settings
        body = await read_body(request, s.max_body_bytes)
        events = parse_event_batch(body, s.max_batch_events, None, s.max_future_skew_s)
        region = await self._region()
        applied, dups = await region.apply_events(events)
        return encode(
            {"accepted": len(events), "applied": applied, "duplicates": dups},
            wants_msgpack(request),
        )

    # -- profiles -----------------------------------------------------------------

    @api.get(
        f"/{API_VERSION}/profiles/{{customer_id}}", tags=["profiles"], summary="Read a profile"
    )
    async def get_profile(self, customer_id: str, request: Request) -> Response:
        cid = _customer_id(customer_id)
        region = await self._region()
        result = await region.call_for(cid, "get_profile")
        if result is None:
            raise NotFound(f"no profile for customer {cid!r}", "customer_id")
        return encode(result["profile"], wants_msgpack(request))

    @api.delete(
        f"/{API_VERSION}/profiles/{{customer_id}}",
        tags=["profiles"],
        summary="Erase a profile (right to erasure)",
    )
    async def delete_profile(self, customer_id: str, request: Request) -> Response:
        cid = _customer_id(customer_id)
        region = await self._region()
        result = await region.call_for(cid, "delete_profile")
        if not result["deleted"]:
            raise NotFound(f"no profile for customer {cid!r}", "customer_id")
        return encode({"deleted": cid}, wants_msgpack(request))

    # -- admin --------------------------------------------------------------------

    @api.post(
        f"/{API_VERSION}/admin/snapshot",
        tags=["admin"],
        summary="Snapshot every shard now and compact its journal",
    )
    async def snapshot(self, request: Request) -> Response:
        region = await self._region()
        results = await region.broadcast("snapshot", timeout_s=300.0)
        failed = [r for r in results if "unavailable" in r]
        return encode({"shards": results}, wants_msgpack(request), 503 if failed else 200)

    @api.get(f"/{API_VERSION}/admin/shards", tags=["admin"], summary="Shard statistics")
    async def shard_stats(self, request: Request) -> Response:
        region = await self._region()
        stats = await region.broadcast("stats")
        return encode(
            {"epoch": region.map.epoch if region.map else None, "shards": stats},
            wants_msgpack(request),
        )


def build_app(settings: Settings) -> Any:
    """The Serve application for these settings (used by the CLI and the tests)."""
    return Ingress.options(num_replicas=settings.ingress_replicas).bind(settings.to_dict())
