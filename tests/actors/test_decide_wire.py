"""The decide call's msgpack wire format: what goes in comes out, refusals pass through."""

from __future__ import annotations

from actors.decide_wire import pack_answers, pack_requests, unpack_answers, unpack_requests
from actors.replies import Erased, Expired, Moved, StaleEpoch
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest


def test_requests_round_trip_with_every_field() -> None:
    reqs = [
        DecideRequest("c1", ("web",), "home_hero", {"hour": 3, "device": "ios"}, 2, True, 50.0),
        DecideRequest("c2", ("email", "outbound_call"), None, {}, 1, False, None, True),
    ]
    blob = pack_requests(reqs)
    assert isinstance(blob, bytes)
    assert unpack_requests(blob) == reqs


def test_answers_round_trip_in_order_and_refusals_pass_unchanged() -> None:
    offers = [{"offer_id": "service_message", "channel": "web", "treatment": "sm_web"}]
    record = DecisionRecord.fallback_for("c1", ["web"], offers, "v9", 1700000000.0)
    answers = [record, Moved("c9"), Expired(), Erased("c3")]
    back = unpack_answers(pack_answers(answers))
    assert back == answers
    assert back[0].answer() == record.answer()
    refusal = StaleEpoch(7)
    assert pack_answers(refusal) is refusal and unpack_answers(refusal) is refusal
