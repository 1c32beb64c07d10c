"""Validation of incoming event batches."""

from __future__ import annotations

import pytest

from models.customer.events import parse_event_batch, parse_ts
from models.errors import ValidationError

NOW = 1_800_000_000.0


def test_timestamps_accept_iso_and_epoch_and_default_to_now() -> None:
    assert parse_ts(None, "ts", NOW, 300) == NOW
    assert parse_ts(1_700_000_000, "ts", NOW, 300) == 1_700_000_000.0
    assert parse_ts("2023-11-14T22:13:20Z", "ts", NOW, 300) == 1_700_000_000.0
    assert parse_ts("2023-11-14T23:13:20+01:00", "ts", NOW, 300) == 1_700_000_000.0


@pytest.mark.parametrize("bad", ["soon", True, {"a": 1}, -5, float("nan"), NOW + 3600])
def test_bad_timestamps_name_the_field(bad) -> None:
    with pytest.raises(ValidationError) as ei:
        parse_ts(bad, "events[0].ts", NOW, 300)
    assert ei.value.field == "events[0].ts"


def test_batch_is_validated_whole_and_names_the_bad_event() -> None:
    body = {
        "events": [
            {"event_id": "1", "customer_id": "c", "type": "page_view"},
            {"event_id": "2", "customer_id": "c", "type": "complaint", "attributes": {"a": {}}},
        ]
    }
    with pytest.raises(ValidationError) as ei:
        parse_event_batch(body, 10, NOW)
    assert ei.value.field == "events[1].attributes.a"


def test_batch_limit() -> None:
    events = [{"event_id": str(i), "customer_id": "c", "type": "complaint"} for i in range(3)]
    with pytest.raises(ValidationError) as ei:
        parse_event_batch({"events": events}, 2, NOW)
    assert ei.value.code == "batch_too_large"


def test_valid_batch_becomes_event_tuples() -> None:
    (ev,) = parse_event_batch(
        {"events": [{"event_id": "1", "customer_id": "c", "type": "response", "offer_id": "o",
                     "attributes": {"outcome": "clicked"}, "channel": "web", "ts": NOW - 1}]},
        10,
        NOW,
    )  # fmt: skip
    assert (ev.event_id, ev.customer_id, ev.type, ev.ts, ev.channel, ev.offer_id) == (
        "1", "c", "response", NOW - 1, "web", "o",
    )  # fmt: skip
