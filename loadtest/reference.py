"""The reference row: the same decision code in one plain ASGI process, no Ray.

What a user who gave up on distribution would run on the same machine: one
uvicorn process (uvloop, httptools) with a raw ASGI app, the profiles in a
local :class:`ProfileStore`, the bundled catalogue and propensity model, and
:func:`models.decisioning.arbitration.decide` called per request, exactly as
the shard calls it (validation by ``parse_decide_request``, impressions
recorded on the profile, the answer from ``DecisionRecord.answer()``). It
checks a bearer key like the real server, but has no journal, no shards, no
coalescing and no fallback. The benchmark (``loadtest.bench``) starts it as a
child process and loads it with ``wrk`` beside the real server.

Run alone: ``python -m loadtest.reference --port 8100 --profiles 10000``
(``RTIM_API_KEY`` is the key it accepts).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
from typing import Any

from loadtest.workload import EventFactory, customer_id
from models.customer.events import parse_event
from models.customer.store import ProfileStore
from models.decisioning.arbitration import decide
from models.decisioning.catalog import load_catalog
from models.decisioning.request import parse_decide_request
from models.errors import RtimError
from models.learning.registry import ModelRegistry
from models.settings import Settings

JSON_HEADERS = [(b"content-type", b"application/json")]


class ReferenceApp:
    """Raw ASGI: ``GET /noop`` and ``POST /v1/decide``; everything else 404."""

    def __init__(self, profiles: int, api_key: str, seed: int = 1) -> None:
        settings = Settings()
        self.catalog = load_catalog(settings.catalog)
        self.scorer = ModelRegistry(settings.model_registry, self.catalog.group_of).latest()
        self.gap_s = settings.session_gap_s
        self.max_limit = settings.max_decide_limit
        self.expected = f"Bearer {api_key}".encode()
        self.store = ProfileStore()
        factory = EventFactory("reference", seed)
        now = time.time()
        for i in range(profiles):
            raw = factory.profile_history(customer_id(i))
            self.store.apply_events([parse_event(ev, k, now) for k, ev in enumerate(raw)], now)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not hmac.compare_digest(auth, self.expected):
            await _send(send, 401, b'{"error":{"code":"unauthenticated"}}')
        elif scope["path"] == "/noop":
            await _send(send, 200, b'{"ok":true}')
        elif scope["path"] == "/v1/decide" and scope["method"] == "POST":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            status, answer = self.decide(body)
            await _send(send, status, answer)
        else:
            await _send(send, 404, b'{"error":{"code":"not_found"}}')

    def decide(self, body: bytes) -> tuple[int, bytes]:
        try:
            req = parse_decide_request(json.loads(body), self.catalog, self.max_limit)
        except (ValueError, RtimError) as exc:
            return 400, json.dumps({"error": {"message": str(exc)}}).encode()
        now = time.time()
        profile = self.store.get_or_new(req.customer_id)
        record = decide(profile, req, self.catalog, self.scorer, now, self.gap_s)
        for o in record.offers:
            profile.record_contact(now, o.offer_id, o.channel, "impression")
        self.store.put(profile)
        return 200, json.dumps(record.answer(), separators=(",", ":")).encode()


async def _send(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--profiles", type=int, default=10_000)
    args = p.parse_args(argv)
    import uvicorn

    app = ReferenceApp(args.profiles, os.environ.get("RTIM_API_KEY", ""))
    print(f"reference: {args.profiles} profiles loaded", flush=True)
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="off",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
