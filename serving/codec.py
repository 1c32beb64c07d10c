"""Request and response bodies: JSON or msgpack, with a size limit.

JSON is the default (the catalogue route also takes YAML). A client sends
``Content-Type: application/msgpack`` to post msgpack and ``Accept:
application/msgpack`` to get msgpack back; a msgpack request without an
``Accept`` header is answered in msgpack too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import Response

from models.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType, ValidationError
from models.safe_yaml import load_bounded_yaml

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    if any(t in accept for t in _MSGPACK_TYPES):
        return True
    sent = _media_type(request.headers.get("content-type"))
    return sent in _MSGPACK_TYPES and accept in ("", "*/*")


async def read_body(request: Request, limit: int, yaml_ok: bool = False) -> Any:
    """Decode the body as JSON or msgpack (or YAML, if ``yaml_ok``); enforce ``limit`` bytes."""
    ctype = _media_type(request.headers.get("content-type"))
    is_yaml = yaml_ok and ctype in _YAML_TYPES
    # No default type: a browser can send a body without a CORS preflight only
    # as text/plain, a form or with no type at all, so none of these is JSON.
    if ctype not in (JSON, *_MSGPACK_TYPES) and not ctype.endswith("+json") and not is_yaml:
        also = ", application/yaml" if yaml_ok else ""
        raise UnsupportedMediaType(
            f"unsupported content type {ctype!r}; send application/json, application/msgpack{also}",
            "content-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise MalformedBody("request body is empty", "body")
    if is_yaml:
        # Off the event loop: even a bounded document takes a while to compose.
        try:
            data = await asyncio.to_thread(load_bounded_yaml, raw)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise MalformedBody(f"body is not valid YAML: {exc}", "body") from None
        check_text(data)
        return data
    if ctype in _MSGPACK_TYPES:
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise MalformedBody(f"body is not valid msgpack: {exc}", "body") from None
        if not _plainly_clean(data):
            check_text(data)
        return data
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedBody(f"body is not valid JSON: {str(exc)[:200]}", "body") from None
    # Lone surrogates reach a str only through a \u escape or raw ED A0..BF
    # bytes (json.loads decodes bytes with surrogatepass), NULs through \u0000.
    if b"\\u" in raw or b"\xed" in raw:
        check_text(data)
    return data


def _bad_char(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "a lone surrogate (not valid Unicode)"
    return None


def _plainly_clean(data: Any) -> bool:
    """True when no string in ``data`` can hold a NUL or a lone surrogate.

    One JSON encoding in C instead of :func:`check_text`'s walk in Python (a
    tenth of its cost on a bulk import's 1,000-event bodies): JSON escapes a
    NUL as ``\\u0000`` and cannot encode a lone surrogate at all. False (walk
    to find the field) on any doubt, a literal backslash-u0000 included.
    """
    try:
        return b"\\u0000" not in msgspec.json.encode(data)
    except Exception:  # unencodable (deep, odd keys): let the walk judge
        return False


def check_text(data: Any, field: str = "") -> None:
    """Refuse strings (keys and values) with NUL characters or lone surrogates.

    Neither has a use in ids, attributes or catalogues, and a lone surrogate
    cannot be encoded as UTF-8 for hashing, journalling or answering.
    """
    stack: list[tuple[Any, str]] = [(data, field)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            bad = _bad_char(value)
            if bad:
                raise ValidationError(f"text contains {bad}", where or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    bad = _bad_char(key)
                    if bad:
                        raise ValidationError(f"a key contains {bad}", where or None)
                stack.append((item, path))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


def encode(
    data: Any, msgpack_out: bool, status: int = 200, headers: dict | None = None
) -> Response:
    if msgpack_out:
        body = msgpack.packb(data, use_bin_type=True)
        return Response(body, status_code=status, media_type=MSGPACK, headers=headers)
    body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)
