"""What every route module uses: the replica's :class:`Ingress` and the codec."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from models.customer.events import MAX_ID_LEN
from models.errors import ValidationError
from serving.codec import check_text, encode, wants_msgpack
from serving.ingress import Ingress

API = "/v1"


async def ingress_of(request: Request) -> Ingress:
    """The replica's ingress state, connected to the shards."""
    ingress: Ingress = request.app.state.ingress
    return await ingress.ready()


def answer(request: Request, data: object, status: int = 200) -> Response:
    """Encode ``data`` as the client asked (JSON or msgpack)."""
    return encode(data, wants_msgpack(request), status)


def customer_id_param(value: str) -> str:
    if not value or len(value) > MAX_ID_LEN:
        raise ValidationError(f"customer_id must be 1..{MAX_ID_LEN} characters", "customer_id")
    check_text(value, "customer_id")
    return value
