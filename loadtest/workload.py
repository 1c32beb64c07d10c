"""What the load looks like: customer ids, events and decide bodies.

Shared by the locust scenarios and the benchmark so both send the same
shapes. Plain Python (no asyncio, no gevent) so it works under either.

Customer ``i`` is ``f"{prefix}{i:08d}"``; the benchmark preloads customers
``0 .. N-1`` with :meth:`EventFactory.profile_history`, and the scenarios pick
ids from the same space so their decisions see real profiles.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

DEFAULT_PREFIX = "c"
PAGES = ("/", "/cards", "/loans", "/savings", "/mortgages", "/premium", "/help")
PRODUCTS = ("credit_card", "personal_loan", "savings_account", "mortgage", "premium_account")
SEGMENTS = (  # segment, share, age range, median income
    ("young", 0.30, (18, 30), 28_000),
    ("family", 0.30, (28, 50), 45_000),
    ("affluent", 0.15, (35, 70), 120_000),
    ("senior", 0.25, (65, 90), 30_000),
)
DEVICES = ("desktop", "mobile", "tablet")


def customer_id(index: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}{index:08d}"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def live_context(rng: random.Random, now: float | None = None) -> dict[str, Any]:
    """A channel's request context: device and the customer's local hour/weekday."""
    t = time.gmtime(now or time.time())
    return {"device": rng.choice(DEVICES), "hour": t.tm_hour, "weekday": t.tm_wday}


class EventFactory:
    """Builds valid ``/v1/events`` objects with ids unique to this factory.

    ``tag`` prefixes every event id; give each client its own (the default is
    random) so two runs never send the same id, which the server would count
    as a duplicate instead of applying.
    """

    def __init__(self, tag: str | None = None, seed: int | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:10]
        self.rng = random.Random(seed)
        self.n = 0

    def event(self, cid: str, etype: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        return {"event_id": f"{self.tag}-{self.n}", "customer_id": cid, "type": etype, **fields}

    # -- single events ----------------------------------------------------------------

    def page_view(self, cid: str, channel: str = "web") -> dict[str, Any]:
        return self.event(cid, "page_view", channel=channel, attributes={"page": self._page()})

    def add_to_cart(self, cid: str, channel: str = "web") -> dict[str, Any]:
        rng = self.rng
        item = {"item": rng.choice(PRODUCTS), "qty": 1, "price": rng.randrange(100, 20000, 10)}
        return self.event(cid, "add_to_cart", channel=channel, attributes=item)

    def response(
        self,
        cid: str,
        outcome: str,
        decision_id: str | None = None,
        offer_id: str | None = None,
        channel: str | None = None,
    ) -> dict[str, Any]:
        ev = self.event(cid, "response", attributes={"outcome": outcome})
        if decision_id:
            ev["decision_id"] = decision_id
        if offer_id:
            ev["offer_id"] = offer_id
        if channel:
            ev["channel"] = channel
        return ev

    def random_event(self, cid: str) -> dict[str, Any]:
        """One event of a realistic mix (mostly page views), for the firehose."""
        r = self.rng.random()
        if r < 0.70:
            return self.page_view(cid, self.rng.choice(("web", "app")))
        if r < 0.82:
            return self.add_to_cart(cid)
        if r < 0.88:
            return self.event(
                cid, "purchase", attributes={"amount": self.rng.randrange(5, 500)}, channel="web"
            )
        if r < 0.92:
            return self.event(cid, "profile_update", attributes={"churn_risk": self._churn()})
        if r < 0.96:
            return self.response(
                cid, self.rng.choice(("clicked", "ignored")), offer_id="service_message"
            )
        if r < 0.98:
            return self.event(cid, "credit_check", attributes={"result": self._credit()})
        return self.event(cid, "complaint", channel="call_center", attributes={"topic": "fees"})

    # -- histories ------------------------------------------------------------------

    def profile_history(self, cid: str) -> list[dict[str, Any]]:
        """A new customer's first events: attributes, holdings, a visit (about 6 events)."""
        rng = self.rng
        seg, _, (lo, hi), income = rng.choices(SEGMENTS, weights=[s[1] for s in SEGMENTS])[0]
        attrs = {
            "segment": seg,
            "age": rng.randint(lo, hi),
            "income": round(income * rng.lognormvariate(0.0, 0.35), -2),
            "tenure_years": round(rng.expovariate(0.2), 1),
            "churn_risk": self._churn(),
        }
        events = [self.event(cid, "profile_update", attributes=attrs)]
        for product in PRODUCTS:
            if rng.random() < 0.25:
                events.append(
                    self.event(cid, "purchase", channel="branch", attributes={"product": product})
                )
        if rng.random() < 0.15:
            ch = rng.choice(("email", "sms", "outbound_call"))
            events.append(self.event(cid, "opt_out", attributes={"channel": ch}))
        for _ in range(rng.randint(1, 4)):
            events.append(self.page_view(cid, rng.choice(("web", "app"))))
        if rng.random() < 0.10:
            events.append(self.add_to_cart(cid))
        if rng.random() < 0.05:
            events.append(self.event(cid, "complaint", channel="call_center"))
        if rng.random() < 0.10:
            events.append(self.event(cid, "credit_check", attributes={"result": self._credit()}))
        return events

    def _page(self) -> str:
        return self.rng.choice(PAGES)

    def _churn(self) -> float:
        return round(self.rng.betavariate(2.0, 6.0), 3)

    def _credit(self) -> str:
        return "fail" if self.rng.random() < 0.2 else "pass"


def decide_body(
    cid: str,
    channel: str | None = "web",
    placement: str | None = None,
    *,
    channels: list[str] | None = None,
    context: dict[str, Any] | None = None,
    explain: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """A ``/v1/decide`` body for one channel (or several with ``channels``)."""
    body: dict[str, Any] = {"customer_id": cid}
    if channels:
        body["channels"] = channels
    else:
        body["channel"] = channel
    if placement:
        body["placement"] = placement
    if context:
        body["context"] = context
    if explain:
        body["explain"] = True
    if limit:
        body["limit"] = limit
    return body
