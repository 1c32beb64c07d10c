"""Segment routes: page through the customers a rule selects, evaluated in the shards."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from models.decisioning.segments import MAX_PAGE, compile_segment
from models.errors import ValidationError
from serving import schema
from serving.auth import require
from serving.codec import read_body
from serving.routes.common import API, answer, ingress_of

# Members of a segment are profile ids (and, for exports, profiles): profiles:read.
router = APIRouter(dependencies=[require("profiles:read")])


@router.post(
    f"{API}/segments/members",
    tags=["decisions"],
    summary="One page of the customers of one shard that a segment rule selects",
    responses=schema.typed(schema.SEGMENT_PAGE),
    openapi_extra=schema.body(
        {
            "type": "object",
            "properties": {
                "rule": {"description": "a condition of the rule language, or null (everyone)"},
                "shard": {"type": "integer", "minimum": 0},
                "after": {"type": ["string", "null"]},
                "limit": {"type": "integer", "minimum": 1},
                "profiles": {"type": "boolean"},
            },
        }
    ),
)
async def segment_members(request: Request) -> Response:
    """``{"rule": condition, "shard": i, "after": cursor, "limit": n}`` → ``{"ids", "next"}``.

    Walk shard 0..``shards``-1, each until ``next`` is null. The rule is
    checked here first, so a bad rule is a 400 before any shard is asked; a
    null rule selects every customer. ``"profiles": true`` adds each member's
    profile (``rtim export profiles``).
    """
    ing = await ingress_of(request)
    body = await read_body(request, ing.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ValidationError("body must be an object with 'rule'", None)
    rule = body.get("rule")
    compile_segment(rule)
    shards = len(ing.region.shards)
    shard = body.get("shard", 0)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ValidationError(f"shard must be an integer from 0 to {shards - 1}", "shard")
    after = body.get("after")
    if after is not None and not isinstance(after, str):
        raise ValidationError("after must be a string (the previous page's next)", "after")
    limit = body.get("limit", 1000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE}", "limit")
    profiles = body.get("profiles", False)
    if not isinstance(profiles, bool):
        raise ValidationError("profiles must be true or false", "profiles")
    reply = await ing.region.ask(shard, "segment_members", rule, after, limit, profiles)
    return answer(request, {**reply, "shard": shard, "shards": shards})
