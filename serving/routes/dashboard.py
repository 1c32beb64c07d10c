"""The HTML dashboard: ``GET /dashboard`` and its two assets, shipped in the package.

The page, script and stylesheet are public (they hold no data); the script
reads ``/v1/reports/*`` with an API key the user types in, kept in the
browser's ``sessionStorage`` and sent as ``Authorization: Bearer``. These
routes are left out of the OpenAPI document (they are not API operations).
A strict Content-Security-Policy keeps the page to this server alone.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from models.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise NotFound(f"no dashboard asset {name!r}", "name")
    data = resources.files("serving").joinpath("dashboard", name).read_bytes()
    return Response(data, media_type=media, headers=HEADERS)


@router.get("/dashboard")
async def dashboard() -> Response:
    return _asset("index.html")


@router.get("/dashboard/")
async def dashboard_slash() -> Response:
    return RedirectResponse("/dashboard")


@router.get("/dashboard/{name}")
async def dashboard_asset(name: str) -> Response:
    return _asset(name)
