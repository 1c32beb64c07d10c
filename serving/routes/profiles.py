"""Profile routes: read a profile (by id or identifier), its decisions, and erase it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from models.audit import pseudonym
from models.errors import NotFound, ValidationError
from models.identity.config import parse_identifiers
from serving import schema
from serving.audit import audit
from serving.auth import require
from serving.codec import check_text
from serving.ingress import Ingress
from serving.routes.common import API, answer, customer_id_param, ingress_of

router = APIRouter(tags=["profiles"])
_read = [require("profiles:read")]


async def _profile(ing: Ingress, cid: str) -> dict[str, Any]:
    """The profile (following merges) with its identifiers; ``NotFound`` if none."""
    profile = await ing.region.call_for(cid, "get_profile")
    if profile is None:
        raise NotFound(f"no profile for customer {cid!r}", "customer_id")
    profile["identifiers"] = await ing.identity.identifiers_of(profile["customer_id"])
    return profile


@router.get(
    f"{API}/profiles/{{customer_id}}",
    summary="Read a profile",
    dependencies=_read,
    responses=schema.typed(schema.PROFILE),
)
async def get_profile(customer_id: str, request: Request) -> Response:
    cid = customer_id_param(customer_id)
    ing = await ingress_of(request)
    return answer(request, await _profile(ing, cid))


@router.get(
    f"{API}/profiles",
    summary="Find a profile by an identifier (e.g. ?cookie=abc or ?account=42)",
    dependencies=_read,
    responses=schema.typed(schema.PROFILE),
)
async def find_profile(request: Request) -> Response:
    ing = await ingress_of(request)
    ids = {k: v for k, v in request.query_params.items()}
    check_text(ids)
    if not ids:
        types = list(ing.identity_config.types)
        raise ValidationError(
            f"give an identifier as a query parameter, one of {types}", "identifiers"
        )
    ids = parse_identifiers(ids, "identifiers", ing.identity_config)
    pid = await ing.identity.lookup(ids)
    if pid is None:
        raise NotFound("no profile for these identifiers", "identifiers")
    return answer(request, await _profile(ing, pid))


@router.delete(
    f"{API}/profiles/{{customer_id}}",
    summary="Erase a profile (right to erasure)",
    dependencies=[require("profiles:erase")],
    responses=schema.typed(schema.ERASED),
)
async def delete_profile(customer_id: str, request: Request) -> Response:
    cid = customer_id_param(customer_id)
    ing = await ingress_of(request)
    deleted = await ing.region.call_for(cid, "delete_profile", follow=False)
    forgotten = await ing.identity.erase(cid)
    await ing.region.broadcast("forget_moves", cid)
    found = bool(deleted or forgotten)
    await audit(request, "profile.erase", pseudonym(cid), "erased" if found else "not_found",
                identifiers=len(forgotten))  # fmt: skip
    if not found:
        raise NotFound(f"no profile for customer {cid!r}", "customer_id")
    return answer(request, {"deleted": cid, "identifiers": forgotten})


@router.get(
    f"{API}/profiles/{{customer_id}}/decisions",
    tags=["decisions"],
    summary="A customer's logged decisions, newest first",
    dependencies=_read,
    responses=schema.typed(schema.DECISION_ENTRIES),
)
async def customer_decisions(customer_id: str, request: Request) -> Response:
    cid = customer_id_param(customer_id)
    ing = await ingress_of(request)
    entries = await ing.region.call_for(cid, "decisions_of", follow=False)
    return answer(request, {"decisions": entries})
