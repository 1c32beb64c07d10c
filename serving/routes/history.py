"""History route: page through one shard's interaction history (``rtim export history``)."""

from __future__ import annotations

import math
import time

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from actors.history import MAX_PAGE
from models.errors import ValidationError
from serving import schema
from serving.auth import require
from serving.routes.common import API, answer, ingress_of

# Rows hold profiles and what was shown to whom: the reporting scope, like decision logs.
router = APIRouter(dependencies=[require("reports:read")])

DEFAULT_RANGE_S = 86400.0


def time_range(since: float | None, until: float | None) -> tuple[float, float]:
    """``since``/``until`` (unix seconds; default the last 24 h), checked: 400 naming the field."""
    now = time.time()
    until = now if until is None else until
    since = until - DEFAULT_RANGE_S if since is None else since
    for name, value in (("since", since), ("until", until)):
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise ValidationError(f"{name} must be unix seconds", name)
    if since > until:
        raise ValidationError("since must not be after until", "since")
    return since, until


def parse_cursor(value: str | None) -> list | None:
    """A page cursor as ``file:offset`` (the ``next`` of the previous page)."""
    if value is None:
        return None
    name, _, offset = value.rpartition(":")
    if not name or not offset.isdigit() or len(value) > 200:
        raise ValidationError("cursor must be the previous page's next", "cursor")
    return [name, int(offset)]


@router.get(
    f"{API}/history",
    tags=["reports"],
    summary="One page of one shard's interaction history (decisions or outcomes)",
    responses=schema.typed(schema.HISTORY_PAGE),
)
async def history_page(
    request: Request,
    shard: int = Query(0, ge=0, description="walk shards 0..shards-1, each until next is null"),
    kind: str = Query("decision", pattern="^(decision|outcome)$"),
    since: float | None = Query(None, description="unix seconds; default until - 24 h"),
    until: float | None = Query(None, description="unix seconds (excluded); default now"),
    cursor: str | None = Query(None, max_length=200, description="the previous page's next"),
    limit: int = Query(1000, ge=1, le=MAX_PAGE),
) -> Response:
    """Rows in the schema of ``docs/history.md``; outcome rows are joined by the export."""
    ing = await ingress_of(request)
    lo, hi = time_range(since, until)
    shards = len(ing.region.shards)
    if shard >= shards:
        raise ValidationError(f"shard must be an integer from 0 to {shards - 1}", "shard")
    page = await ing.region.ask(shard, "history_page", kind, lo, hi, parse_cursor(cursor), limit)
    nxt = page["next"]
    return answer(request, {
        "shards": shards, "since": lo, "until": hi, "rows": page["rows"],
        "next": None if nxt is None else f"{nxt[0]}:{nxt[1]}",
    })  # fmt: skip
