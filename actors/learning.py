"""``Learning``: a shard's adaptive models and the responses they learn from.

A ``response`` event attributed to a logged decision (``DecisionEngine.attribute``)
teaches the model of the chosen offer × channel, with the predictor bins the
decision stored (:attr:`DecisionRecord.predictors`), so the model learns what
the customer looked like when the offer was made, not now. Each (decision,
offer) teaches once: the profile's event dedupe drops a repeated event_id
before attribution, and a second response to the same offer (clicked, then
accepted) is counted but not learned again. Responses to unknown, evicted or
erased decisions are counted and ignored.

Uplift: a response without an offer to a decision that chose nothing teaches
the no-message model (``none@<channel>``), and a configured goal event (e.g.
``purchase``) within ``goal_window`` of a customer's last adaptive decision
is a positive for whatever that decision chose, message or none.

Evidence needs no journal record of its own: it is a pure function of the
journalled decisions and events, so replaying them re-learns it; snapshots
hold it (:meth:`snapshot`). Reset, freeze and the negatives of
``learning.negative_after`` (decisions that got no outcome in time) are
journalled (:class:`ModelsReset`, :class:`ModelFrozen`, :class:`OutcomesTimedOut`).

Across shards, :meth:`merge_peers` replaces what the other shards learned with
the sum of their exports (see :class:`~models.learning.adaptive.AdaptiveModels`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from actors.durable import JournalRecord, journal_record
from models.decisioning.catalog import Catalog
from models.decisioning.log import DecisionLog
from models.decisioning.record import DecisionRecord
from models.learning.adaptive import NO_MESSAGE, AdaptiveModels, model_key

NONE_PREFIX = f"{NO_MESSAGE}@"


@journal_record("lreset")
@dataclass(frozen=True, slots=True)
class ModelsReset(JournalRecord):
    model: str | None  # None: every adaptive model


@journal_record("lexpire")
@dataclass(frozen=True, slots=True)
class OutcomesTimedOut(JournalRecord):
    decision_ids: list[str]  # decisions without an outcome after learning.negative_after


@journal_record("lfreeze")
@dataclass(frozen=True, slots=True)
class ModelFrozen(JournalRecord):
    model: str
    frozen: bool


class Learning:
    """Learns from attributed responses; answers what the models know."""

    COUNTERS = ("learned", "unknown_decision", "not_offered", "repeat", "unlabelled", "frozen",
                "goal_unattributed")  # fmt: skip

    def __init__(self, capacity: int = 10000, seed: int | None = None) -> None:
        self.models = AdaptiveModels(seed=seed)
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.capacity = capacity  # customers whose last decision is remembered (= log size)
        self.latest: OrderedDict[str, str] = OrderedDict()  # customer id -> decision id
        # Adaptive decisions by time, for learning.negative_after (bounded like the log).
        self.pending: deque[tuple[float, str]] = deque(maxlen=capacity)

    # -- state ------------------------------------------------------------------------

    def reset_state(self) -> None:
        self.models.reset()
        self.models.frozen.clear()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.latest.clear()
        self.pending.clear()

    def load_snapshot(self, state: dict, log: DecisionLog) -> None:
        self.models.load(state.get("learning", {}))
        self.counts.update(state.get("learning_counts", {}))
        for record in log.records():
            self.note(record)

    def snapshot(self) -> dict[str, Any]:
        return {"learning": self.models.state(), "learning_counts": dict(self.counts)}

    def configure(self, catalog: Catalog) -> None:
        """Follow the catalogue's prior weight; evidence of every offer is kept."""
        if catalog.learning is not None:
            self.models.prior_weight = catalog.learning.prior_weight

    # -- learning ---------------------------------------------------------------------

    def learn(
        self, record: DecisionRecord | None, offer_id: str | None, outcome: str, catalog: Catalog
    ) -> bool:
        """Learn one response attributed to ``record`` (None: unknown, evicted, erased).

        A response without an offer to a decision that chose nothing teaches
        the no-message model the decision stored.
        """
        if record is None:
            self.counts["unknown_decision"] += 1
            return False
        learning = catalog.learning
        if learning is None:
            return False
        label = learning.label(outcome)
        if label is None:
            self.counts["unlabelled"] += 1
            return False
        return self._learn(record, self._arm(record, offer_id), label, catalog)

    def goal(self, customer_id: str, ts: float, log: DecisionLog, catalog: Catalog) -> bool:
        """A goal event (e.g. ``purchase``): a positive for the customer's last decision."""
        learning = catalog.learning
        did = self.latest.get(customer_id)
        record = log.get(did) if did is not None else None
        if learning is None or record is None or not 0 <= ts - record.ts <= learning.goal_window_s:
            self.counts["goal_unattributed"] += 1
            return False
        first = record.offers[0].offer_id if record.offers else None
        return self._learn(record, self._arm(record, first), True, catalog)

    def note(self, record: DecisionRecord) -> None:
        """Remember a customer's last adaptive decision (for goal events)."""
        if record.predictors:
            self.pending.append((record.ts, record.decision_id))
            self.latest[record.customer_id] = record.decision_id
            self.latest.move_to_end(record.customer_id)
            while len(self.latest) > self.capacity:
                self.latest.popitem(last=False)

    def expire(self, now: float, log: DecisionLog, catalog: Catalog) -> list[str]:
        """Decisions older than ``negative_after`` without an outcome: learn each as a negative.

        Returns their ids, for the shard to journal as :class:`OutcomesTimedOut`.
        """
        learning = catalog.learning
        if learning is None or learning.negative_after_s is None:
            return []
        cutoff = now - learning.negative_after_s
        expired = []
        while self.pending and self.pending[0][0] <= cutoff:
            _, did = self.pending.popleft()
            record = log.get(did)
            if record is not None and not record.learned:
                expired.append(did)
        self.timed_out(OutcomesTimedOut(expired), log, catalog)
        return expired

    def timed_out(self, rec: OutcomesTimedOut, log: DecisionLog, catalog: Catalog) -> None:
        """Learn each decision of ``rec`` as a negative (live, and when replayed)."""
        for did in rec.decision_ids:
            record = log.get(did)
            if record is not None and not record.learned:
                first = record.offers[0].offer_id if record.offers else None
                self._learn(record, self._arm(record, first), False, catalog)

    @staticmethod
    def _arm(record: DecisionRecord, offer_id: str | None) -> str | None:
        if offer_id is None:
            if record.offers:
                return None
            return next((k for k in record.predictors or {} if k.startswith(NONE_PREFIX)), None)
        chosen = next((o for o in record.offers if o.offer_id == offer_id), None)
        return None if chosen is None else model_key(offer_id, chosen.channel)

    def _learn(
        self, record: DecisionRecord, key: str | None, label: bool, catalog: Catalog
    ) -> bool:
        learning = catalog.learning
        bins = (record.predictors or {}).get(key) if key is not None else None
        if key is None or bins is None or learning is None:
            self.counts["not_offered"] += 1  # not chosen, or not adaptive when decided
            return False
        if key in record.learned:
            self.counts["repeat"] += 1
            return False
        if key.startswith(NONE_PREFIX):
            names = learning.baseline_names
        else:
            names = learning.names.get(key.rsplit("@", 1)[0], ())
        if len(names) != len(bins):
            self.counts["not_offered"] += 1  # the catalogue changed the model since
            return False
        if not self.models.learn_one(key, names, bins, label):
            self.counts["frozen"] += 1
            return False
        record.learned.append(key)
        self.counts["learned"] += 1
        return True

    # -- operations -------------------------------------------------------------------

    def reset(self, rec: ModelsReset) -> None:
        self.models.reset(rec.model)

    def freeze(self, rec: ModelFrozen) -> None:
        self.models.freeze(rec.model, rec.frozen)

    def export(self) -> dict[str, dict]:
        return self.models.export()

    def merge_peers(self, exports: list[dict[str, dict]]) -> None:
        self.models.merge_others(exports)

    def summaries(self, catalog: Catalog, key: str | None = None) -> list[dict[str, Any]]:
        keys = adaptive_model_keys(catalog) if key is None else [key]
        return [self.models.summary(k) for k in keys]


def adaptive_model_keys(catalog: Catalog) -> list[str]:
    """A catalogue's adaptive models: per adaptive offer × channel (+ no message per channel)."""
    learning = catalog.learning
    if learning is None:
        return []
    keys = [
        model_key(o.id, ch)
        for o in catalog.offers.values()
        if learning.is_adaptive(o.id)
        for ch in dict.fromkeys(t.channel for t in o.treatments)
    ]
    if learning.ranking == "incremental":
        keys += [model_key(NO_MESSAGE, ch) for ch in catalog.channels]
    return keys
