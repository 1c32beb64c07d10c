"""msgpack bodies: NULs and lone surrogates are refused wherever they hide, clean bodies pass."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from starlette.requests import Request

from models.errors import ValidationError
from serving.codec import read_body


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/msgpack")]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def _read(data: Any) -> Any:
    return asyncio.run(read_body(_request(msgpack.packb(data, use_bin_type=True)), 1 << 20))


def test_a_clean_bulk_body_is_read_as_sent() -> None:
    attributes = {"page": "/p", "n": 0, "raw": b"\x00\x01"}
    events = [
        {"event_id": f"e{i}", "customer_id": "c", "type": "page_view", "ts": 1.5 + i,
         "attributes": attributes}
        for i in range(1000)
    ]  # fmt: skip
    assert _read({"events": events}) == {"events": events}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"events": [{"attributes": {"page": "a\x00b"}}]}, "events[0].attributes.page"),
        ({"events": [{"attributes": {"pa\x00ge": "x"}}]}, "events[0].attributes"),
        ({"events": [{}, {"customer_id": "c\x00"}]}, "events[1].customer_id"),
    ],
)
def test_a_nul_anywhere_is_refused_with_its_field(data: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        _read(data)
    assert "NUL" in err.value.message
    assert err.value.field == field


def test_text_that_only_spells_a_nul_escape_is_accepted() -> None:
    assert _read({"note": "a\\u0000b"}) == {"note": "a\\u0000b"}
