"""Report routes: ``GET /v1/reports/{volumes,experiments,models,health}`` (scope ``reports:read``).

Each shard keeps hourly report counters (``actors/reporting.py``); a report
asks every shard for the buckets of its time range and sums them here
(merge on read), then shapes the body (``models/reporting/reports.py``).
``since``/``until`` are unix seconds, default the last 24 hours; a bad range
is a 400 naming the field. A shard that does not answer makes the counting
reports answer 503 (a partial sum would look like a drop); the health report
shows it as not alive instead. See docs/reports.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Query
from ray.exceptions import RayError
from starlette.requests import Request
from starlette.responses import Response

from actors.learning import adaptive_model_keys
from models.decisioning.catalog import Catalog, load_catalog
from models.errors import Unavailable
from models.reporting import reports
from models.reporting.counters import ReportCounters
from serving import schema
from serving.auth import require
from serving.ingress import Ingress
from serving.routes.adaptive import merged_models
from serving.routes.common import API, answer, ingress_of

router = APIRouter(
    prefix=f"{API}/reports", tags=["reports"], dependencies=[require("reports:read")]
)

SHARD_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0

Since = Query(None, description="unix seconds; default until - 24 h")
Until = Query(None, description="unix seconds; default now")


async def _counters(
    ing: Ingress, since: float, until: float, required: bool = True
) -> tuple[ReportCounters, list[bool]]:
    """Every shard's counters of ``[since, until)``, summed; and which shards answered."""

    async def one(i: int) -> dict | None:
        try:
            return await ing.region.ask(
                i, "report_counters", since, until, timeout_s=SHARD_TIMEOUT_S
            )
        except Exception:
            if required:
                raise Unavailable(f"shard {i} does not answer; retry", 5.0) from None
            return None

    states = await asyncio.gather(*(one(i) for i in range(len(ing.region.shards))))
    merged = ReportCounters.merged(s for s in states if s is not None)
    return merged, [s is not None for s in states]


def _range(since: float | None, until: float | None) -> tuple[float, float]:
    return reports.time_range(since, until, time.time())


async def _report_input(
    request: Request, since: float | None, until: float | None, with_catalog: bool = False
) -> tuple[Ingress, float, float, ReportCounters, Catalog | None]:
    """What a counting report starts from: the range, every shard's counters, the catalogue."""
    lo, hi = _range(since, until)
    ing = await ingress_of(request)
    counters, _ = await _counters(ing, lo, hi)
    catalog = None
    if with_catalog:
        catalog = load_catalog(await ing.region.coordinator.get_catalog.remote())
    return ing, lo, hi, counters, catalog


@router.get(
    "/volumes",
    summary="Decisions, impressions, responses and success rates per hour, channel and offer",
    responses=schema.typed(schema.REPORT_VOLUMES),
)
async def volumes(
    request: Request,
    since: float | None = Since,
    until: float | None = Until,
    channel: str | None = Query(None, max_length=200, description="only this channel"),
    offer_id: str | None = Query(None, max_length=200, description="only this offer"),
) -> Response:
    _, lo, hi, counters, _ = await _report_input(request, since, until)
    return answer(request, reports.volumes(counters, lo, hi, channel, offer_id))


def declared_experiments(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """The catalogue's experiments as ``{name: {"control", "arms": {arm: {share, policy}}}}``.

    Read from the catalogue's own form (``experiments:`` as a list or a map);
    an empty map when it declares none.
    """
    out: dict[str, dict[str, Any]] = {}
    control = catalog.experiments.control  # the default control group, an experiment too
    if control is not None:
        out[control.name] = {
            "control": control.control,
            "arms": {a.name: {"share": a.share, "policy": a.policy} for a in control.arms},
        }
    raw = catalog.to_dict().get("experiments") or {}
    items = raw.items() if isinstance(raw, Mapping) else ((e.get("name"), e) for e in raw)
    for name, spec in items:
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            continue
        arms_raw = spec.get("arms") or {}
        arm_items = (arms_raw.items() if isinstance(arms_raw, Mapping)
                     else ((a.get("name") or a.get("arm"), a) for a in arms_raw))  # fmt: skip
        arms = {
            str(arm): {"share": a.get("share"), "policy": a.get("policy", "full")}
            for arm, a in arm_items
            if arm is not None and isinstance(a, Mapping)
        }
        out[name] = {"control": spec.get("control"), "arms": arms}
    return out


@router.get(
    "/experiments",
    summary="Per experiment arm: success rate, value per decision, lift against control (95% CI)",
    responses=schema.typed(schema.REPORT_EXPERIMENTS),
)
async def experiments(
    request: Request, since: float | None = Since, until: float | None = Until
) -> Response:
    _, lo, hi, counters, catalog = await _report_input(request, since, until, True)
    assert catalog is not None
    body = reports.experiments(counters, lo, hi, declared_experiments(catalog))
    return answer(request, body)


@router.get(
    "/models",
    summary="Per model (offer@channel): evidence, adaptive maturity, AUC over time",
    responses=schema.typed(schema.REPORT_MODELS),
)
async def models(
    request: Request, since: float | None = Since, until: float | None = Until
) -> Response:
    ing, lo, hi, counters, catalog = await _report_input(request, since, until, True)
    adaptive: dict[str, dict] = {}
    if catalog is not None and catalog.learning is not None:
        try:
            merged, _ = await merged_models(ing, catalog)
        except (Unavailable, asyncio.TimeoutError, RayError):
            raise Unavailable("a shard does not answer; retry", 5.0) from None
        adaptive = {k: merged.summary(k) for k in adaptive_model_keys(catalog)}
    return answer(request, reports.models(counters, lo, hi, adaptive))


@router.get(
    "/health",
    summary="Shards alive, profiles, decisions, events applied; fallbacks over time",
    responses=schema.typed(schema.REPORT_HEALTH),
)
async def health(
    request: Request, since: float | None = Since, until: float | None = Until
) -> Response:
    lo, hi = _range(since, until)
    ing = await ingress_of(request)

    async def stats(i: int) -> dict | None:
        try:
            return await ing.region.ask(i, "stats", timeout_s=HEALTH_TIMEOUT_S)
        except Exception:
            return None

    shard_stats, (counters, _) = await asyncio.gather(
        asyncio.gather(*(stats(i) for i in range(len(ing.region.shards)))),
        _counters(ing, lo, hi, required=False),
    )
    shards = [
        {
            "name": f"shard-{i}",
            "alive": s is not None,
            "degraded": s.get("degraded") if s else None,
            "profiles": int(s["profiles"]) if s else 0,
            "decisions": int(s["decisions"]) if s else 0,
            "events_applied": int(s["events_applied"]) if s else 0,
        }
        for i, s in enumerate(shard_stats)
    ]
    body = {"since": lo, "until": hi, "shards": shards,
            "fallbacks": reports.fallback_series(counters, lo, hi)}  # fmt: skip
    return answer(request, body)
