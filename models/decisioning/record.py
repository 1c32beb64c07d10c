"""``DecisionRecord``: the one record of a decision, and its projections.

Everything that describes a decision is derived from this record:

- :meth:`DecisionRecord.answer` is the body of a decide answer;
- :meth:`DecisionRecord.log_entry` is the decision-log entry
  (``GET /v1/decisions/{id}``), with every scored candidate, the chosen
  offers with the probability each was chosen with, and the outcomes
  attributed to it later;
- :meth:`DecisionRecord.history_row` is its interaction-history row (the
  schema ``rtim export history`` writes, documented in ``docs/history.md``),
  and :func:`outcome_row` the row of an outcome attributed to it later;
- :func:`to_builtins` / :func:`from_builtins` are its journal form.

A fallback answer (the shard missed the deadline) is a record too
(:meth:`DecisionRecord.fallback`), so it has the same shape.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import msgspec

MAX_OUTCOMES = 16

# Decision ids: a random per-process prefix and a counter. Unique across
# processes and restarts, and ~20x cheaper than uuid4 (which reads the OS's
# random source for every id).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "little"))


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)  # a forked child never repeats ids

# The keys of an offer in a decide answer, in order.
ANSWER_OFFER_KEYS = ("offer_id", "channel", "treatment", "placement", "content", "propensity",
                     "priority", "value", "probability")  # fmt: skip


class ChosenOffer(msgspec.Struct, kw_only=True):
    """An offer the decision chose, on one channel with one treatment."""

    offer_id: str
    group: str
    channel: str
    treatment: str
    placement: str | None = None
    content: Any = None
    propensity: float | None = None
    priority: float | None = None
    value: float | None = None
    probability: float = 1.0  # with which the policy chose it

    def answer(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ANSWER_OFFER_KEYS}


_CANDIDATE_KEYS = frozenset(
    ("offer_id", "channel", "treatment", "propensity", "priority", "value", "cost")
)


class Outcome(msgspec.Struct):
    """A response attributed to a decision (``offer_id`` None: to "no message")."""

    offer_id: str | None
    outcome: str
    ts: float


class DecisionRecord(msgspec.Struct, kw_only=True):
    """What was decided for one customer, with what, and what came of it."""

    decision_id: str
    customer_id: str
    ts: float
    channels: list[str]
    catalog_version: str
    model_version: str | None
    offers: list[ChosenOffer]  # empty: "no action"
    candidates: list[dict] = []  # every scored candidate (offer, channel, treatment, p, priority)
    fallback: bool = False
    impressions: bool = False  # its offers were counted as impressions when decided
    trace: list[dict] | None = None  # with explain: every candidate's fate (never journalled)
    outcomes: list[Outcome] = []
    # With which probability the policy chose no action (for an empty answer;
    # 1.0 for a deterministic policy). Offers carry their own probability.
    probability: float = 1.0
    # Adaptive models: model key (offer@channel) -> predictor bins at decision
    # time, so a later response is learned with the values the decision saw.
    predictors: dict[str, list[str]] | None = None
    learned: list[str] = []  # the models that learned from this decision's outcome (once each)
    # Experiments: the experiment and arm the customer was assigned to, and
    # the arm's policy variant ("full" when no experiment applies).
    experiment: str | None = None
    arm: str | None = None
    policy: str = "full"
    # The request's idempotency key: the same customer and key get this decision again.
    request_key: str | None = None

    @staticmethod
    def new_id() -> str:
        """A new 32-hex-digit decision id."""
        return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"

    @classmethod
    def fallback_for(
        cls,
        customer_id: str,
        channels: list[str],
        offers: list[dict],
        catalog_version: str,
        now: float,
        arm: Any = None,
    ) -> DecisionRecord:
        """The catalogue's fallback answer, for a shard that could not decide in time.

        ``arm``: the customer's experiment assignment (an ``Assignment``); a
        holdout (``no_message``) arm gets no fallback offers either.
        """
        if arm is not None and arm.policy == "no_message":
            offers = []
        return cls(
            decision_id=cls.new_id(),
            customer_id=customer_id,
            ts=now,
            channels=channels,
            catalog_version=catalog_version,
            model_version=None,
            offers=[
                ChosenOffer(
                    offer_id=o["offer_id"],
                    group=o.get("group") or o["offer_id"],
                    channel=o["channel"],
                    treatment=o["treatment"],
                    placement=o.get("placement"),
                    content=o.get("content"),
                    value=o.get("value"),
                )
                for o in offers
            ],
            fallback=True,
            experiment=arm.experiment if arm is not None else None,
            arm=arm.arm if arm is not None else None,
            policy=arm.policy if arm is not None else "full",
        )

    @property
    def no_action(self) -> bool:
        return not self.offers

    # -- projections ------------------------------------------------------------------

    def answer(self) -> dict[str, Any]:
        """The decide answer's body."""
        out: dict[str, Any] = {
            "decision_id": self.decision_id,
            "customer_id": self.customer_id,
            "offers": [o.answer() for o in self.offers],
            "catalog_version": self.catalog_version,
            "model_version": self.model_version,
            "fallback": self.fallback,
            "experiment": self.experiment,
            "arm": self.arm,
        }
        if not self.offers:
            out["probability"] = self.probability
        if self.fallback:
            for o in out["offers"]:
                del o["propensity"], o["priority"]
        if self.trace is not None:
            out["trace"] = self.trace
        return out

    def _header(self) -> dict[str, Any]:
        """What every projection but the answer starts with."""
        return {
            "decision_id": self.decision_id,
            "customer_id": self.customer_id,
            "ts": self.ts,
            "channels": list(self.channels),
            "catalog_version": self.catalog_version,
            "model_version": self.model_version,
            "fallback": self.fallback,
            "experiment": self.experiment,
            "arm": self.arm,
            "policy": self.policy,
        }

    def log_entry(self) -> dict[str, Any]:
        """The decision-log entry (``GET /v1/decisions/{id}``)."""
        out = self._header()
        out["candidates"] = self.candidates
        out["chosen"] = [
            {"offer_id": o.offer_id, "channel": o.channel, "treatment": o.treatment,
             "probability": o.probability}
            for o in self.offers
        ]  # fmt: skip
        out["impressions"] = self.impressions
        if not self.offers:
            out["probability"] = self.probability
        if self.predictors:
            out["predictors"] = self.predictors
        if self.outcomes:
            out["outcomes"] = [msgspec.structs.asdict(o) for o in self.outcomes]
        return out

    def history_row(self, context: dict | None) -> dict[str, Any]:
        """The interaction-history row, without outcomes (they are rows of their own)."""
        # Arbitration logs candidates with exactly the row's keys: those are
        # written as they are (encoding does not change them); others (older
        # journals) are rebuilt with every key.
        candidates = [
            c if c.keys() == _CANDIDATE_KEYS else
            {"offer_id": c["offer_id"], "channel": c["channel"], "treatment": c["treatment"],
             "propensity": c["propensity"], "priority": c["priority"],
             "value": c.get("value"), "cost": c.get("cost")}
            for c in self.candidates
        ]  # fmt: skip
        chosen = [
            {"offer_id": o.offer_id, "channel": o.channel, "treatment": o.treatment,
             "probability": o.probability, "propensity": o.propensity, "value": o.value}
            for o in self.offers
        ]  # fmt: skip
        return {
            **self._header(),
            "candidates": candidates,
            "chosen": chosen,
            "probability": self.probability,  # of no message; meaningful when chosen is []
            "context": context,
        }

    def value_of(self, offer_id: str | None) -> float | None:
        """The value of one of the chosen offers (None if it chose no such offer)."""
        for o in self.offers:
            if o.offer_id == offer_id:
                return o.value
        return None

    # -- outcomes ---------------------------------------------------------------------

    def attribute(self, offer_id: str | None, outcome: str, ts: float) -> str | None:
        """Attach an outcome; return the offer it concerns (default: the first chosen).

        None when the decision chose nothing and the outcome names no offer
        (the outcome is kept, with no offer: it is the no-message outcome).
        """
        if offer_id is None:
            if not self.offers:
                if len(self.outcomes) < MAX_OUTCOMES:
                    self.outcomes.append(Outcome(None, outcome, ts))
                return None
            offer_id = self.offers[0].offer_id
        if len(self.outcomes) < MAX_OUTCOMES:
            self.outcomes.append(Outcome(offer_id, outcome, ts))
        return offer_id


def outcome_row(
    decision_id: str, customer_id: str, offer_id: str | None, outcome: str, ts: float,
    positive: bool, value: float | None,
) -> dict[str, Any]:  # fmt: skip
    """An outcome's history row; the export joins it into its decision's ``outcomes``."""
    return {"kind": "outcome", "decision_id": decision_id, "customer_id": customer_id,
            "offer_id": offer_id, "outcome": outcome, "ts": ts, "positive": positive,
            "value": value}  # fmt: skip


def to_builtins(record: DecisionRecord) -> dict[str, Any]:
    """The journal form: plain msgpack-able data, without the explain trace."""
    data = msgspec.to_builtins(record)
    data.pop("trace", None)
    return data


def from_builtins(data: dict[str, Any]) -> DecisionRecord:
    return msgspec.convert(data, DecisionRecord)
