"""Admission control in the replica: when a request arrived, and what the caller asked for."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.requests import Request

from models.decisioning.catalog import load_catalog
from models.decisioning.request import DecideRequest
from models.errors import Unavailable, ValidationError
from models.partitioning import PartitionMap
from models.settings import load_settings
from serving.ingress import Ingress, arrival, sheds_with_503


def request_with(**headers: str) -> Request:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/decide", "headers": raw})


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
def test_request_start_stamp_in_seconds_ms_or_us_moves_arrival_back(scale: float) -> None:
    now = time.monotonic()
    stamp = f"t={(time.time() - 0.25) * scale:.0f}" if scale > 1 else f"{time.time() - 0.25:.3f}"
    arrived = arrival(request_with(x_request_start=stamp), now)
    assert now - 0.3 < arrived < now - 0.2


@pytest.mark.parametrize("stamp", ["", "t=", "soon", "t=nan", "-5", "+30", "-3600"])
def test_unusable_request_start_stamp_counts_from_now(stamp: str) -> None:
    if stamp in ("+30", "-3600"):  # in the future, or an hour old: relative to now, not to
        stamp = f"{time.time() + float(stamp):.3f}"  # when the tests were collected
    now = time.monotonic()
    assert arrival(request_with(x_request_start=stamp), now) == now


def test_on_overload_header_is_fallback_reject_or_a_400() -> None:
    assert sheds_with_503(request_with()) is False
    assert sheds_with_503(request_with(rtim_on_overload="fallback")) is False
    assert sheds_with_503(request_with(rtim_on_overload=" Reject ")) is True
    with pytest.raises(ValidationError) as err:
        sheds_with_503(request_with(rtim_on_overload="maybe"))
    assert err.value.field == "rtim-on-overload"


def test_decide_whose_deadline_passed_in_the_queue_is_shed_without_a_shard_call() -> None:
    settings = load_settings(None)
    ingress = Ingress(settings, metrics=False)  # no Ray: a shard call would fail loudly
    ingress.catalog = load_catalog(settings.catalog)
    req = DecideRequest("c1", ("web",), "home_hero", deadline_ms=50)
    queued_since = time.monotonic() - 0.06
    record = asyncio.run(ingress.decide(req, arrived=queued_since))
    assert record.fallback is True and ingress.shed == 1 and ingress.fallbacks == 1
    with pytest.raises(Unavailable) as err:
        asyncio.run(ingress.decide(req, arrived=queued_since, shed_with_503=True))
    assert err.value.code == "deadline" and err.value.retry_after_s >= 1
    assert ingress.rejected == 1 and ingress.fallbacks == 1


def test_shed_decide_is_answered_at_its_deadline_not_at_once() -> None:
    # A decide the shard's queue could not answer in time is shed without a shard
    # call, but answered at its deadline: a caller that asks again at once (a
    # closed loop, a retry storm) must not turn each quick fallback into more load.
    settings = load_settings(None)
    ingress = Ingress(settings, metrics=False)  # no Ray: a shard call would fail loudly
    ingress.catalog = load_catalog(settings.catalog)
    ingress.region.map = PartitionMap.initial(settings.partitions, 2)
    req = DecideRequest("c1", ("web",), "home_hero", deadline_ms=80)
    shard = ingress.region.shard_of("c1")
    ingress.coalescer._calls[shard] = 1  # a call in flight whose round trip is 1 s
    ingress.coalescer._round_trips[shard].append(1.0)
    for shed_with_503 in (False, True):
        arrived = time.monotonic() - 0.02
        try:
            record = asyncio.run(ingress.decide(req, arrived=arrived, shed_with_503=shed_with_503))
            assert record.fallback is True and not shed_with_503
        except Unavailable as exc:
            assert shed_with_503 and exc.code == "deadline"
        answered_after = time.monotonic() - arrived
        assert 0.075 <= answered_after < 0.5, answered_after
    assert ingress.shed == 2 and ingress.fallbacks == 1 and ingress.rejected == 1


def test_decide_for_a_shard_that_is_down_falls_back_at_once() -> None:
    # Not load: nothing to hold back. The fallback answers without waiting out
    # the caller's 5 s deadline.
    settings = load_settings(None)
    ingress = Ingress(settings, metrics=False)
    ingress.catalog = load_catalog(settings.catalog)
    ingress.region.map = PartitionMap.initial(settings.partitions, 2)

    async def down(request: DecideRequest, deadline: float) -> None:
        raise Unavailable("shard 0 does not answer", 1.0, code="shard_unavailable")

    ingress.coalescer.decide = down  # type: ignore[method-assign]
    req = DecideRequest("c1", ("web",), "home_hero", deadline_ms=5000)
    started = time.monotonic()
    record = asyncio.run(ingress.decide(req))
    assert record.fallback is True and ingress.shed == 0
    assert time.monotonic() - started < 1.0
