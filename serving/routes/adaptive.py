"""Adaptive model routes: watch, reset, freeze and export the models that learn.

``GET /v1/models/adaptive`` sums every shard's own evidence at the time of the
call (exact, not the last periodic merge), so what it shows is everything
learned so far; the counters say what was not learned and why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from actors.learning import adaptive_model_keys
from models.decisioning.catalog import Catalog, load_catalog
from models.errors import NotFound, ValidationError
from models.learning.adaptive import AdaptiveModels
from serving import schema
from serving.auth import require
from serving.codec import read_body
from serving.ingress import Ingress
from serving.routes.common import API, answer, ingress_of

router = APIRouter(prefix=f"{API}/models/adaptive", tags=["learning"])
_read = [require("reports:read")]
_admin = [require("admin")]


async def _catalog(ing: Ingress) -> Catalog:
    return load_catalog(await ing.region.coordinator.get_catalog.remote())


async def _known(ing: Ingress, model: str) -> Catalog:
    catalog = await _catalog(ing)
    if model not in adaptive_model_keys(catalog):
        raise NotFound(f"no adaptive model {model!r} in catalogue {catalog.version!r}", "model")
    return catalog


async def _merged(ing: Ingress, catalog: Catalog) -> tuple[AdaptiveModels, dict[str, int]]:
    exports = await ing.region.broadcast("learning_evidence")
    models = AdaptiveModels(catalog.learning.prior_weight if catalog.learning else 20.0)
    models.merge_others(exports)
    states = await ing.region.broadcast("adaptive_models")
    counts: dict[str, int] = {}
    for state in states:
        for k, v in state["counts"].items():
            counts[k] = counts.get(k, 0) + v
        models.frozen.update(m["model"] for m in state["models"] if m["frozen"])
    return models, counts


@router.get(
    "",
    summary="Every adaptive model: responses, success rate, online AUC, maturity",
    dependencies=_read,
    responses=schema.typed(schema.ADAPTIVE_MODELS),
)
async def list_models(request: Request) -> Response:
    ing = await ingress_of(request)
    catalog = await _catalog(ing)
    models, counts = await _merged(ing, catalog)
    body: dict[str, Any] = {
        "catalog_version": catalog.version,
        "models": [models.summary(k) for k in adaptive_model_keys(catalog)],
        "responses": counts,
    }
    return answer(request, body)


@router.get(
    "/{model}",
    summary="One adaptive model (offer@channel)",
    dependencies=_read,
    responses=schema.typed(schema.ADAPTIVE_MODEL),
)
async def get_model(request: Request, model: str) -> Response:
    ing = await ingress_of(request)
    catalog = await _known(ing, model)
    models, _ = await _merged(ing, catalog)
    return answer(request, models.summary(model))


@router.get(
    "/{model}/export",
    summary="A model's merged evidence (counts per predictor bin)",
    dependencies=_read,
    responses=schema.typed(schema.ADAPTIVE_EXPORT),
)
async def export_model(request: Request, model: str) -> Response:
    ing = await ingress_of(request)
    catalog = await _known(ing, model)
    models, _ = await _merged(ing, catalog)
    ev = models.merged.get(model)
    return answer(request, {"model": model, "evidence": None if ev is None else ev.to_builtins()})


@router.post(
    "/{model}/reset",
    summary="Forget what a model learned (it restarts from its prior)",
    dependencies=_admin,
    responses=schema.typed(schema.ADAPTIVE_RESET),
)
async def reset_model(request: Request, model: str) -> Response:
    ing = await ingress_of(request)
    await _known(ing, model)
    shards = await ing.region.broadcast("reset_model", model)
    return answer(request, {"model": model, "shards": shards})


@router.post(
    "/{model}/freeze",
    summary='Stop or resume learning: body {"frozen": true|false}',
    responses=schema.typed(schema.ADAPTIVE_FROZEN),
    dependencies=_admin,
    openapi_extra=schema.body(
        {"type": "object", "required": ["frozen"], "properties": {"frozen": {"type": "boolean"}}}
    ),
)
async def freeze_model(request: Request, model: str) -> Response:
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    frozen = body.get("frozen") if isinstance(body, dict) else None
    if not isinstance(frozen, bool):
        raise ValidationError("frozen must be true or false", "frozen")
    await _known(ing, model)
    shards = await ing.region.broadcast("freeze_model", model, frozen)
    return answer(request, {"model": model, "frozen": frozen, "shards": shards})
