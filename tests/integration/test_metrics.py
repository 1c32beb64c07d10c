"""Operator metrics: scraped from Ray's metrics endpoint of the session cluster after traffic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from actors.shard import NAMESPACE, shard_name
from models.partitioning import PartitionMap
from serving import server

# Ray's agent exports on an interval; the test waits this long at most for a value.
SCRAPE_WAIT_S = 60.0
# The labels we set, and the worker (process) that reported the series.
OURS = ("channel", "kind", "offer", "outcome", "shard", "le", "WorkerId")


def metrics_url() -> str:
    """The metrics endpoint of this (single-node) cluster's Ray agent, on loopback."""
    port = server.metrics_url().rsplit(":", 1)[1]
    return f"http://127.0.0.1:{port}"


def scrape(url: str) -> dict[tuple, float]:
    """``(sample name, sorted labels) -> value``, summed over Ray's other labels."""
    text = httpx.get(url, timeout=10).text
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.startswith("ray_rtim_"):
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k in OURS))
            key = (s.name, labels)
            out[key] = out.get(key, 0.0) + s.value
    return out


def total(sample: dict[tuple, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in sample.items() if n == name and want <= set(ls))


async def wait_for(url: str, check, timeout_s: float = SCRAPE_WAIT_S) -> dict[tuple, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        sample = await asyncio.to_thread(scrape, url)
        if check(sample) or time.monotonic() > deadline:
            return sample
        await asyncio.sleep(1.0)


async def test_decisions_responses_events_commits_and_model_updates_are_exported(
    client, server_settings
) -> None:
    url = metrics_url()
    before = await asyncio.to_thread(scrape, url)
    run = uuid.uuid4().hex[:8]
    # Decisions on web and email; count what the answers were.
    expected: Counter = Counter()
    offers: Counter = Counter()
    for i in range(12):
        channel = "web" if i % 2 else "email"
        body = {"customer_id": f"met-{run}-{i}", "channel": channel, "deadline_ms": 5000}
        r = await client.post("/v1/decide", json=body)
        assert r.status_code == 200, r.text
        d = r.json()
        assert not d["fallback"]
        if d["offers"]:
            expected[(d["offers"][0]["channel"], "decision")] += 1
            offers[d["offers"][0]["offer_id"]] += 1
        else:
            expected[(channel, "no_message")] += 1
    # Responses: two accepted, one rejected, one outcome for an offer no catalogue has.
    evs = [
        {"type": "response", "offer_id": "credit_card", "attributes": {"outcome": "accepted"}},
        {"type": "response", "offer_id": "credit_card", "attributes": {"outcome": "accepted"}},
        {"type": "response", "offer_id": "savings_account", "attributes": {"outcome": "rejected"}},
        {"type": "response", "offer_id": f"nope-{run}", "attributes": {"outcome": "clicked"}},
        {"type": "page_view", "attributes": {"page": "/"}},
    ]
    body = {"events": [{"event_id": uuid.uuid4().hex, "customer_id": f"met-{run}-{i}", **e}
                       for i, e in enumerate(evs)]}  # fmt: skip
    r = await client.post("/v1/events", json=body)
    assert r.status_code == 200 and r.json()["applied"] == 5
    # A fallback: the owning shard is made slow past the request's deadline.
    cid = f"met-{run}-slow"
    shard = ray.get_actor(
        shard_name(PartitionMap.initial(server_settings.partitions, 2).shard_of(cid)),
        namespace=NAMESPACE,
    )
    await shard.set_slow.remote(0.5)
    try:
        r = await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                  "deadline_ms": 50})  # fmt: skip
        assert r.json()["fallback"] is True
    finally:
        await shard.set_slow.remote(0.0)
    # A model activation on every shard (the model already active: nothing else changes).
    r = await client.post("/v1/admin/models", json={"version": "v1"})
    assert r.status_code == 200, r.text

    def delta(sample: dict, name: str, **labels: str) -> float:
        # Per series, so a worker another test killed meanwhile (its series gone) adds nothing.
        want = set(labels.items())
        return sum(v - before.get(k, 0.0) for k, v in sample.items()
                   if k[0] == name and want <= set(k[1]))  # fmt: skip

    def wanted(sample: dict) -> dict[str, tuple[float, float]]:
        """What each check found, and what it wants."""
        checks = {
            f"{c}/{k}": (delta(sample, "ray_rtim_decisions_total", channel=c, kind=k), n)
            for (c, k), n in expected.items()
        }
        checks["web/fallback"] = (
            delta(sample, "ray_rtim_decisions_total", channel="web", kind="fallback"),
            1,
        )
        for offer, n in offers.items():
            checks[offer] = (delta(sample, "ray_rtim_offers_chosen_total", offer=offer), n)
        responses = [("accepted", "credit_card", 2), ("rejected", "savings_account", 1),
                     ("clicked", "other", 1)]  # fmt: skip
        for outcome, offer, n in responses:
            found = delta(sample, "ray_rtim_responses_total", outcome=outcome, offer=offer)
            checks[f"{outcome}/{offer}"] = (found, n)
        checks["events"] = (delta(sample, "ray_rtim_events_applied_total"), 5)
        checks["activations"] = (
            delta(sample, "ray_rtim_model_updates_total", kind="model_activation"),
            2,
        )
        return checks

    # At least: in the full suite, work other tests started (imports, campaigns,
    # learning) may still be deciding and applying events on the same labels.
    after = await wait_for(url, lambda s: all(a >= b for a, b in wanted(s).values()))
    assert {k: a for k, (a, b) in wanted(after).items() if a < b} == {}
    # An offer id no catalogue declares is counted as "other", never as its own label;
    # only this test sends one, so that count is exact.
    assert wanted(after)["clicked/other"][0] == 1
    assert not any(f"nope-{run}" in str(k) for k in after)
    assert delta(after, "ray_rtim_journal_commit_seconds_count") >= 2
    assert total(after, "ray_rtim_profiles") > 0
