"""The decide call's wire format between ingress replicas and shards: msgpack, not pickle.

Ray pickles an actor call's arguments and result with cloudpickle, which
visits every object in Python; a batch of decide requests and the records
that answer them are plain data, so msgspec packs them in C instead, once
per call (``ProfileShardImpl.decide_packed``). Answers travel as
``[tag, payload]`` pairs: a packed :class:`DecisionRecord`, the profile a
customer moved to, an expiry, or an erased profile's id. A refused call
(``StaleEpoch``, ``ShardUnavailable``, ``Failed``) is returned as it is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.replies import Erased, Expired, Moved
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest

RECORD, MOVED, EXPIRED, ERASED = range(4)

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(list[DecideRequest])
# Payloads stay raw until their tag says what they are: a record is then
# decoded straight into its Struct (decoding to dicts first and converting
# cost the ingress replica twice as much).
_answers = msgspec.msgpack.Decoder(list[tuple[int, msgspec.Raw]])
_record = msgspec.msgpack.Decoder(DecisionRecord)
_text = msgspec.msgpack.Decoder(str)


def pack_requests(requests: list[DecideRequest]) -> bytes:
    return _encoder.encode(requests)


def unpack_requests(blob: bytes) -> list[DecideRequest]:
    return _requests.decode(blob)


def pack_answers(answers: Any, encoded: dict[int, bytes] | None = None) -> Any:
    """A shard's decide answers as bytes; a refusal (not a list) unchanged.

    ``encoded``: records already packed (for the journal), by ``id(record)``.
    """
    if not isinstance(answers, list):
        return answers
    out: list[tuple[int, Any]] = []
    known = encoded or {}
    for a in answers:
        if isinstance(a, DecisionRecord):
            blob = known.get(id(a))
            out.append((RECORD, msgspec.Raw(blob if blob is not None else _encoder.encode(a))))
        elif isinstance(a, Moved):
            out.append((MOVED, a.to))
        elif isinstance(a, Erased):
            out.append((ERASED, a.customer_id))
        else:
            out.append((EXPIRED, None))
    return _encoder.encode(out)


def unpack_answers(reply: Any) -> Any:
    """The list :meth:`ProfileShardImpl.decide` returned; a refusal unchanged."""
    if not isinstance(reply, bytes):
        return reply
    out: list[Any] = []
    record, text = _record.decode, _text.decode
    for tag, payload in _answers.decode(reply):
        if tag == RECORD:
            out.append(record(payload))
        elif tag == MOVED:
            out.append(Moved(text(payload)))
        elif tag == ERASED:
            out.append(Erased(text(payload)))
        else:
            out.append(Expired())
    return out
