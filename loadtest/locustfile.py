"""Locust scenarios for the decision server.

User classes (name them on the command line to run one; name none for the
``mixed`` shape, every class by its weight):

* ``WebVisitor`` (tag ``web_visitor``): a few page views / add-to-carts, a
  decide on the web at a placement, sometimes a response to that decision;
* ``CallCenter`` (tag ``call_center``): a decide with ``explain`` for an
  agent, then the customer's response;
* ``OutboundCampaign`` (tag ``outbound_campaign``): ``/v1/decide/batch`` for
  a slice of customers on the outbound channels;
* ``EventFirehose`` (tag ``event_firehose``): batches of events.

Settings come from ``RTIM_LT_*`` environment variables (see the README) and
locust's own options (``--host``, ``-u``, ``-r``, ``-t``, ``--csv`` ...).
Customer ids are the benchmark's (``c00000042``): preload them with
``python -m loadtest.bench --url <host> --preload-only --profiles N``, or let
the scenarios create profiles as they go.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, tag, task

# locust puts this file's directory on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.workload import (
    EventFactory,
    customer_id,
    decide_body,
    live_context,
)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"RTIM_LT_{name}", default)


def _env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in _env(name, default).split(",") if x.strip()]


def _weights(spec: str) -> dict[str, int]:
    out = {}
    for part in spec.split(","):
        if part.strip():
            name, _, w = part.partition("=")
            out[name.strip()] = int(w)
    return out


HOST = _env("HOST", "http://127.0.0.1:8000")
CUSTOMERS = int(_env("CUSTOMERS", "10000"))
PREFIX = _env("PREFIX", "c")
WAIT_MIN = float(_env("WAIT_MIN", "0.5"))
WAIT_MAX = float(_env("WAIT_MAX", "2.0"))
WEB_CHANNEL = _env("WEB_CHANNEL", "web")
WEB_PLACEMENT = _env("WEB_PLACEMENT", "home_hero")
AGENT_CHANNEL = _env("AGENT_CHANNEL", "call_center")
OUTBOUND_CHANNELS = _env_list("OUTBOUND_CHANNELS", "email,outbound_call")
CAMPAIGN_BATCH = int(_env("CAMPAIGN_BATCH", "50"))
EVENT_BATCH = int(_env("EVENT_BATCH", "100"))
RESPONSE_RATE = float(_env("RESPONSE_RATE", "0.3"))
# The key to send: RTIM_LT_API_KEY, else RTIM_API_KEY (as for the benchmark).
API_KEY = _env("API_KEY", os.environ.get("RTIM_API_KEY", ""))
MIX = _weights(_env("MIX", "web_visitor=10,call_center=3,outbound_campaign=1,event_firehose=2"))

if CUSTOMERS < 1 or WAIT_MIN < 0 or WAIT_MAX < WAIT_MIN:
    raise ValueError("RTIM_LT_CUSTOMERS must be >= 1 and 0 <= RTIM_LT_WAIT_MIN <= WAIT_MAX")


class RtimUser(FastHttpUser):
    """Common parts: a random customer, an event factory, checked JSON posts."""

    abstract = True
    host = HOST
    wait_time = between(WAIT_MIN, WAIT_MAX)
    default_headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else None

    def on_start(self) -> None:
        self.rng = random.Random()
        self.factory = EventFactory(uuid.uuid4().hex[:10])

    def customer(self) -> str:
        return customer_id(self.rng.randrange(CUSTOMERS), PREFIX)

    def post(self, path: str, body: dict[str, Any], name: str) -> dict[str, Any] | None:
        """POST JSON; a non-200 or an error body is a locust failure. Returns the body."""
        with self.client.post(path, json=body, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return None
            try:
                data = resp.json()
            except ValueError:
                resp.failure("answer is not JSON")
                return None
            if "error" in data:
                resp.failure(str(data["error"])[:200])
                return None
            return data

    def events(self, events: list[dict[str, Any]], name: str) -> None:
        self.post("/v1/events", {"events": events}, name)

    def respond(
        self, decision: dict[str, Any] | None, outcomes: tuple[str, ...], channel: str
    ) -> None:
        """Sometimes answer a decision (attributed to it by decision_id)."""
        if not decision or not decision.get("offers") or self.rng.random() >= RESPONSE_RATE:
            return
        ev = self.factory.response(
            decision["customer_id"],
            self.rng.choice(outcomes),
            decision_id=decision["decision_id"],
            channel=channel,
        )
        self.events([ev], "/v1/events [response]")


class WebVisitor(RtimUser):
    """A visit: page views and maybe an add-to-cart, then the hero slot's offer."""

    weight = MIX.get("web_visitor", 10)

    @tag("web_visitor")
    @task
    def visit(self) -> None:
        cid = self.customer()
        for _ in range(self.rng.randint(1, 3)):
            self.events([self.factory.page_view(cid, WEB_CHANNEL)], "/v1/events [page_view]")
        if self.rng.random() < 0.3:
            self.events([self.factory.add_to_cart(cid, WEB_CHANNEL)], "/v1/events [add_to_cart]")
        body = decide_body(cid, WEB_CHANNEL, WEB_PLACEMENT, context=live_context(self.rng))
        decision = self.post("/v1/decide", body, "/v1/decide [web]")
        self.respond(decision, ("clicked", "ignored", "accepted"), WEB_CHANNEL)


class CallCenter(RtimUser):
    """An agent asks for the next best action, with the reasons, then logs the answer."""

    weight = MIX.get("call_center", 3)

    @tag("call_center")
    @task
    def call(self) -> None:
        body = decide_body(self.customer(), AGENT_CHANNEL, explain=True, limit=2)
        decision = self.post("/v1/decide", body, "/v1/decide [call_center explain]")
        self.respond(decision, ("accepted", "rejected"), AGENT_CHANNEL)


class OutboundCampaign(RtimUser):
    """A campaign run picks the best outbound action for a slice of customers."""

    weight = MIX.get("outbound_campaign", 1)

    @tag("outbound_campaign")
    @task
    def campaign(self) -> None:
        ids = [self.customer() for _ in range(CAMPAIGN_BATCH)]
        body = {"customer_ids": ids, "channels": OUTBOUND_CHANNELS}
        data = self.post("/v1/decide/batch", body, "/v1/decide/batch [outbound]")
        if data is not None and len(data.get("decisions", ())) != len(ids):
            self.environment.events.request.fire(
                request_type="CHECK",
                name="decide/batch answers one per customer",
                response_time=0,
                response_length=0,
                exception=AssertionError("count"),
            )


class EventFirehose(RtimUser):
    """A stream of behavioural events from the channels, in batches."""

    weight = MIX.get("event_firehose", 2)

    @tag("event_firehose")
    @task
    def firehose(self) -> None:
        batch = [self.factory.random_event(self.customer()) for _ in range(EVENT_BATCH)]
        self.events(batch, f"/v1/events [batch {EVENT_BATCH}]")
