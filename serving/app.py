"""The HTTP API: a Ray Serve deployment with a FastAPI ingress.

Replicas are stateless: they validate and decode requests, route them to
the owning :class:`~actors.shard.ProfileShard` through a
:class:`~serving.region.ShardRegion`, and encode the answer. All state lives
in the shards.
"""

import asyncio
import dataclasses
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve import metrics as serve_metrics
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from actors.shard import load_model
from models.catalog import Catalog, load_catalog
from models.decision import DecideRequest, parse_decide_batch, parse_decide_request
from models.errors import (
    CatalogError,
    ModelError,
    NotFound,
    RtimError,
    Unavailable,
    ValidationError,
)
from models.events import MAX_ID_LEN, Event, parse_event_batch
from models.identity import IdentityConfig, IdentityConflict, parse_identifiers
from models.settings import Settings
from serving import schema
from serving.coalesce import DecideCoalescer
from serving.codec import encode, read_body, wants_msgpack
from serving.errors import (
    error_response,
    handle_http_error,
    handle_request_validation,
    handle_rtim_error,
    handle_unexpected,
)
from serving.identity import IdentityResolver
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

# Per-process (= per replica) in-flight bound; set from settings by Ingress.
_limits = {"max_inflight": 1024, "inflight": 0}


class InflightBound:
    """Answer 503 + Retry-After beyond the replica's in-flight bound.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs more per
    request than a decision does.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _limits["inflight"] >= _limits["max_inflight"]:
            response = error_response(
                Request(scope), Unavailable("server overloaded; retry", 1.0, code="overloaded")
            )
            await response(scope, receive, send)
            return
        _limits["inflight"] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _limits["inflight"] -= 1


api.add_middleware(InflightBound)


def _customer_id(value: str) -> str:
    if not value or len(value) > MAX_ID_LEN:
        raise ValidationError(f"customer_id must be 1..{MAX_ID_LEN} characters", "customer_id")
    return value


def _tagged_customer(item: tuple[int, DecideRequest]) -> str:
    return item[1].customer_id


def _untag(group: list[tuple[int, DecideRequest]]) -> list[DecideRequest]:
    return [r for _, r in group]


_ERRORS = {"invalid_model": ModelError, "invalid_catalog": CatalogError}


def _shard_error(err: dict, shard: int | None) -> RtimError:
    cls = _ERRORS.get(err.get("code", ""), ValidationError)
    return cls(err.get("message", "decision failed"), err.get("field"), err.get("code"))


# Module-level helpers must be defined above the deployment: Serve serialises
# the class when it is decorated, with the globals that exist at that moment.
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
        self.catalog: Catalog | None = None
        self.fallbacks = 0
        self.overloaded = 0
        # Exported with Ray's metrics (Prometheus) as ray_rtim_decide_fallbacks.
        self.fallback_counter = serve_metrics.Counter(
            "rtim_decide_fallbacks",
            description="Decides answered with the catalogue fallback (deadline missed "
            "or shard unavailable).",
        )
        self.identity_config = IdentityConfig.from_settings_value(self.settings.identity or None)
        self.identity = IdentityResolver(self.region, self.identity_config)
        self.coalescer = DecideCoalescer(
            self.region,
            self.settings.coalesce_max_batch,
            max_calls=self.settings.coalesce_max_calls,
            max_queue=self.settings.max_inflight_per_shard,
        )
        _limits["max_inflight"] = self.settings.max_inflight_per_replica

    async def _region(self) -> ShardRegion:
        if not self._started:
            await self.region.start()
            self.catalog = load_catalog(await self.region.coordinator.get_catalog.remote())
            self._started = True
        return self.region

    async def _refresh_catalog(self, seen_version: str) -> None:
        """A shard decided with a catalogue we do not have: fetch the active one."""
        if self.catalog is None or self.catalog.version != seen_version:
            self.catalog = load_catalog(await self.region.coordinator.get_catalog.remote())

    # -- operations ---------------------------------------------------------------

    @api.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz(self) -> Response:
        return encode({"status": "ok"}, False)

    @api.get("/readyz", tags=["operations"], summary="Every shard answers")
    async def readyz(self, request: Request) -> Response:
        region = await self._region()
        pings = await region.ping_all()
        down = [i for i, p in enumerate(pings) if p is None]
        degraded = {
            i: p["degraded"] or p["model_error"]
            for i, p in enumerate(pings)
            if p and (p["degraded"] or p.get("model_error"))
        }
        id_pings = await self.identity.ping_all()
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
        events = parse_event_batch(
            body, s.max_batch_events, None, s.max_future_skew_s, self.identity_config
        )
        region = await self._region()
        events, report = await self._recognise(events)
        applied, dups = await region.apply_events(events, self.identity.moved)
        answer: dict[str, Any] = {"accepted": len(events), "applied": applied, "duplicates": dups}
        if report:
            answer["identity"] = report
        return encode(answer, wants_msgpack(request))

    def _with_customer_id(
        self, identifiers: dict, customer_id: str | None, field: str = "customer_id"
    ) -> dict:
        """``customer_id`` beside identifiers is the ``customer_id_type`` identifier."""
        cid_type = self.identity_config.customer_id_type
        if not customer_id or cid_type is None:
            return identifiers
        if identifiers.get(cid_type, customer_id) != customer_id:
            raise IdentityConflict(
                f"customer_id and identifiers.{cid_type} name different customers", field
            )
        return {cid_type: customer_id, **identifiers}

    async def _recognise(self, events: list[Event]) -> tuple[list[Event], dict[str, Any]]:
        """Resolve events that carry identifiers to profile ids (linking as needed)."""
        out: list[Event] = []
        merged: list[str] = []
        dropped: list[str] = []
        for i, ev in enumerate(events):
            if ev.identifiers:
                ids = self._with_customer_id(
                    dict(ev.identifiers), ev.customer_id or None, f"events[{i}].customer_id"
                )
                pid, rep = await self.identity.resolve(ids, f"events[{i}].identifiers")
                merged += rep.get("merged", [])
                dropped += rep.get("dropped_identifiers", [])
                ev = ev._replace(customer_id=pid)
            out.append(ev)
        report: dict[str, Any] = {}
        if merged:
            report["merged"] = merged
        if dropped:
            report["dropped_identifiers"] = dropped
        return out, report

    # -- profiles -----------------------------------------------------------------

    @api.get(
        f"/{API_VERSION}/profiles/{{customer_id}}", tags=["profiles"], summary="Read a profile"
    )
    async def get_profile(self, customer_id: str, request: Request) -> Response:
        cid = _customer_id(customer_id)
        await self._region()
        return encode(await self._profile(cid), wants_msgpack(request))

    async def _profile(self, cid: str) -> dict[str, Any]:
        for _ in range(3):
            result = await self.region.call_for(cid, "get_profile")
            if result is None:
                raise NotFound(f"no profile for customer {cid!r}", "customer_id")
            if "moved" not in result:
                profile = result["profile"]
                profile["identifiers"] = await self.identity.identifiers_of(cid)
                return profile
            cid = result["moved"]
        raise Unavailable("profile keeps moving (merges); retry", 1.0)

    @api.get(
        f"/{API_VERSION}/profiles",
        tags=["profiles"],
        summary="Find a profile by an identifier (e.g. ?cookie=abc or ?account=42)",
    )
    async def find_profile(self, request: Request) -> Response:
        await self._region()
        ids = {k: v for k, v in request.query_params.items()}
        if not ids:
            types = list(self.identity_config.types)
            raise ValidationError(
                f"give an identifier as a query parameter, one of {types}", "identifiers"
            )
        ids = parse_identifiers(ids, "identifiers", self.identity_config)
        pid = await self.identity.lookup(ids)
        if pid is None:
            raise NotFound("no profile for these identifiers", "identifiers")
        return encode(await self._profile(pid), wants_msgpack(request))

    @api.delete(
        f"/{API_VERSION}/profiles/{{customer_id}}",
        tags=["profiles"],
        summary="Erase a profile (right to erasure)",
    )
    async def delete_profile(self, customer_id: str, request: Request) -> Response:
        cid = _customer_id(customer_id)
        region = await self._region()
        result = await region.call_for(cid, "delete_profile")
        forgotten = await self.identity.erase(cid)
        await region.broadcast("forget_moves", cid)
        if not result["deleted"] and not forgotten:
            raise NotFound(f"no profile for customer {cid!r}", "customer_id")
        return encode({"deleted": cid, "identifiers": forgotten}, wants_msgpack(request))

    # -- decisions ------------------------------------------------------------------

    def _fallback(self, req: DecideRequest) -> dict[str, Any]:
        """The catalogue's fallback answer, for a shard that missed the deadline."""
        assert self.catalog is not None
        self.fallbacks += 1
        self.fallback_counter.inc()
        offers = self.catalog.fallback_offers(req.channels)[: req.limit]
        return {
            "decision_id": uuid.uuid4().hex,
            "customer_id": req.customer_id,
            "offers": [
                {
                    k: o.get(k)
                    for k in ("offer_id", "channel", "treatment", "placement", "content", "value")
                }
                for o in offers
            ],
            "catalog_version": self.catalog.version,
            "model_version": None,
            "fallback": True,
        }

    def _check_versions(self, decisions: list[dict]) -> str | None:
        for d in decisions:
            if self.catalog is not None and d["catalog_version"] != self.catalog.version:
                return d["catalog_version"]
        return None

    @api.post(
        f"/{API_VERSION}/decide",
        tags=["decisions"],
        summary="Next best action for one customer",
        openapi_extra=schema.body(
            schema.DECIDE_BODY,
            "An empty `offers` list means no message. `explain: true` adds the trace. "
            "If the owning shard cannot answer within `deadline_ms` the catalogue's "
            "fallback is returned with `fallback: true`.",
        ),
    )
    async def decide(self, request: Request) -> Response:
        body = await read_body(request, self.settings.max_body_bytes)
        await self._region()
        if isinstance(body, dict) and "identifiers" in body:
            body = dict(body)
            ids = parse_identifiers(body.pop("identifiers"), "identifiers", self.identity_config)
            cid = body.get("customer_id")
            if cid is not None and (not isinstance(cid, str) or not cid):
                raise ValidationError("customer_id must be a non-empty string", "customer_id")
            ids = self._with_customer_id(ids, cid)
            body["customer_id"], _ = await self.identity.resolve(ids, "identifiers")
        req = parse_decide_request(body, self.catalog, self.settings.max_decide_limit)
        deadline_s = (req.deadline_ms or self.settings.decide_deadline_ms) / 1000.0
        deadline_s = min(deadline_s, self.settings.shard_call_timeout_s)
        until = time.time() + deadline_s
        try:
            answer = await asyncio.wait_for(self._decide_one(req, until), timeout=deadline_s)
        except asyncio.TimeoutError:
            return encode(self._fallback(req), wants_msgpack(request))
        except Unavailable as exc:
            if exc.code == "overloaded":
                raise
            # The shard is down, restarting or cannot write: the fallback answers.
            return encode(self._fallback(req), wants_msgpack(request))
        if "expired" in answer:
            return encode(self._fallback(req), wants_msgpack(request))
        if "error" in answer:
            raise _shard_error(answer["error"], None)
        decision = answer
        newer = self._check_versions([decision])
        if newer:
            await self._refresh_catalog(newer)
        return encode(decision, wants_msgpack(request))

    async def _decide_one(self, req: DecideRequest, until: float) -> dict[str, Any]:
        """Decide via the coalescer, following a profile that was merged away."""
        for _ in range(3):
            answer = await self.coalescer.decide(req, until)
            if "moved" not in answer:
                return answer
            self.identity.moved(req.customer_id, answer["moved"])
            req = dataclasses.replace(req, customer_id=answer["moved"])
        raise Unavailable("profile keeps moving (merges); retry", 1.0)

    @api.post(
        f"/{API_VERSION}/decide/batch",
        tags=["decisions"],
        summary="Decisions for many customers (outbound campaigns)",
        openapi_extra=schema.body(
            schema.DECIDE_BATCH_BODY,
            'Either `{"requests": [decide bodies]}` or `{"customer_ids": [...], '
            "...shared decide fields}`. Answers are in request order.",
        ),
    )
    async def decide_batch(self, request: Request) -> Response:
        body = await read_body(request, self.settings.max_body_bytes)
        region = await self._region()
        reqs = parse_decide_batch(
            body, self.catalog, self.settings.max_batch_decisions, self.settings.max_decide_limit
        )
        tagged = [(i, r) for i, r in enumerate(reqs)]
        results = await region.scatter("decide", tagged, _tagged_customer, None, send=_untag)
        out: list[Any] = [None] * len(reqs)
        for group, answer in results:
            if "error" in answer:
                raise _shard_error(answer["error"], None)
            for (i, _), decision in zip(group, answer["decisions"]):
                out[i] = decision
        newer = self._check_versions(out)
        if newer:
            await self._refresh_catalog(newer)
        return encode({"decisions": out}, wants_msgpack(request))

    @api.get(
        f"/{API_VERSION}/decisions/{{decision_id}}",
        tags=["decisions"],
        summary="A logged decision with its candidates, scores and outcomes",
    )
    async def get_decision(self, decision_id: str, request: Request) -> Response:
        region = await self._region()
        for entry in await region.broadcast("get_decision", decision_id):
            if entry is not None:
                return encode(entry, wants_msgpack(request))
        raise NotFound(f"no logged decision {decision_id!r}", "decision_id")

    @api.get(
        f"/{API_VERSION}/profiles/{{customer_id}}/decisions",
        tags=["decisions"],
        summary="A customer's logged decisions, newest first",
    )
    async def customer_decisions(self, customer_id: str, request: Request) -> Response:
        cid = _customer_id(customer_id)
        region = await self._region()
        result = await region.call_for(cid, "decisions_of")
        return encode(result, wants_msgpack(request))

    # -- catalogue and models -------------------------------------------------------

    @api.get(f"/{API_VERSION}/catalog", tags=["catalogue"], summary="The active catalogue")
    async def get_catalog(self, request: Request) -> Response:
        region = await self._region()
        return encode(await region.coordinator.get_catalog.remote(), wants_msgpack(request))

    @api.put(
        f"/{API_VERSION}/admin/catalog",
        tags=["admin"],
        summary="Replace the catalogue (validated, then swapped on every shard)",
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
    async def put_catalog(self, request: Request) -> Response:
        data = await read_body(request, self.settings.max_body_bytes, yaml_ok=True)
        if not isinstance(data, dict):
            # Never a path or text for load_catalog to open on the server.
            raise CatalogError("a catalogue must be a mapping (JSON object or YAML)", None)
        catalog = load_catalog(data)  # CatalogError → 422 naming offer, rule and field
        region = await self._region()
        result = await region.coordinator.set_catalog.remote(catalog.to_dict())
        bad = [r for r in result["shards"] if "catalog_version" not in r]
        self.catalog = catalog
        status = 200 if not bad else 503
        return encode({**result, "failed": bad}, wants_msgpack(request), status)

    @api.get(f"/{API_VERSION}/admin/models", tags=["admin"], summary="Model versions")
    async def list_models(self, request: Request) -> Response:
        from models.registry import ModelRegistry

        region = await self._region()
        versions = await region.coordinator.versions.remote()
        try:
            available = ModelRegistry(self.settings.model_registry).versions()
        except RtimError:
            available = []
        shards = await region.broadcast("versions")
        return encode(
            {"active": versions["model_version"], "available": available, "shards": shards},
            wants_msgpack(request),
        )

    @api.post(
        f"/{API_VERSION}/admin/models",
        tags=["admin"],
        summary="Load and activate a model version on every shard",
        openapi_extra=schema.body(
            {
                "type": "object",
                "required": ["version"],
                "properties": {"version": {"type": "string"}},
            }
        ),
    )
    async def activate_model(self, request: Request) -> Response:
        body = await read_body(request, self.settings.max_body_bytes)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("version"), str)
            or not body["version"]
        ):
            raise ValidationError('body must be {"version": "<model version>"}', "version")
        version = body["version"]
        region = await self._region()
        assert self.catalog is not None
        # Load it here first: a model that does not match its manifest is
        # refused before any shard switches.
        await asyncio.to_thread(load_model, self.settings, version, self.catalog)
        result = await region.coordinator.set_model.remote(version)
        bad = [r for r in result["shards"] if "model_version" not in r]
        return encode({**result, "failed": bad}, wants_msgpack(request), 503 if bad else 200)

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

    @api.get(
        f"/{API_VERSION}/admin/ingress",
        tags=["admin"],
        summary="Counters of the ingress replica that answers",
    )
    async def ingress_stats(self, request: Request) -> Response:
        c, i = self.coalescer, self.identity
        body = {
            "decide_fallbacks": self.fallbacks,
            "inflight": _limits["inflight"],
            "coalesced_batches": c.batches,
            "coalesced_requests": c.requests,
            "mean_batch": round(c.requests / c.batches, 2) if c.batches else None,
            "identity_lookups": i.lookups,
            "identity_cache_hits": i.hits,
            "identity_merges": i.merges,
            "catalog_version": self.catalog.version if self.catalog else None,
        }
        return encode(body, wants_msgpack(request))

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
    return Ingress.options(
        num_replicas=settings.ingress_replicas,
        # Let requests reach our own bound, which answers with a JSON 503.
        max_ongoing_requests=settings.max_inflight_per_replica + 64,
    ).bind(settings.to_dict())
