"""``Learning``: a shard's adaptive models and the responses they learn from.

A ``response`` event attributed to a logged decision (``DecisionEngine.attribute``)
teaches the model of the chosen offer × channel, with the predictor bins the
decision stored (:attr:`DecisionRecord.predictors`), so the model learns what
the customer looked like when the offer was made, not now. Each (decision,
offer) teaches once: the profile's event dedupe drops a repeated event_id
before attribution, and a second response to the same offer (clicked, then
accepted) is counted but not learned again. Responses to unknown, evicted or
erased decisions are counted and ignored.

Evidence needs no journal record of its own: it is a pure function of the
journalled decisions and events, so replaying them re-learns it; snapshots
hold it (:meth:`snapshot`). Reset and freeze are journalled
(:class:`ModelsReset`, :class:`ModelFrozen`).

Across shards, :meth:`merge_peers` replaces what the other shards learned with
the sum of their exports (see :class:`~models.learning.adaptive.AdaptiveModels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.durable import JournalRecord, journal_record
from models.decisioning.catalog import Catalog
from models.decisioning.record import DecisionRecord
from models.learning.adaptive import AdaptiveModels, model_key


@journal_record("lreset")
@dataclass(frozen=True, slots=True)
class ModelsReset(JournalRecord):
    model: str | None  # None: every adaptive model


@journal_record("lfreeze")
@dataclass(frozen=True, slots=True)
class ModelFrozen(JournalRecord):
    model: str
    frozen: bool


class Learning:
    """Learns from attributed responses; answers what the models know."""

    COUNTERS = ("learned", "unknown_decision", "not_offered", "repeat", "unlabelled", "frozen")

    def __init__(self, seed: int | None = None) -> None:
        self.models = AdaptiveModels(seed=seed)
        self.counts = dict.fromkeys(self.COUNTERS, 0)

    # -- state ------------------------------------------------------------------------

    def reset_state(self) -> None:
        self.models.reset()
        self.models.frozen.clear()
        self.counts = dict.fromkeys(self.COUNTERS, 0)

    def load_snapshot(self, state: dict) -> None:
        self.models.load(state.get("learning", {}))
        self.counts.update(state.get("learning_counts", {}))

    def snapshot(self) -> dict[str, Any]:
        return {"learning": self.models.state(), "learning_counts": dict(self.counts)}

    def configure(self, catalog: Catalog) -> None:
        """Follow the catalogue's prior weight; evidence of every offer is kept."""
        if catalog.learning is not None:
            self.models.prior_weight = catalog.learning.prior_weight

    # -- learning ---------------------------------------------------------------------

    def learn(
        self,
        record: DecisionRecord | None,
        offer_id: str | None,
        outcome: str,
        repeat: bool,
        catalog: Catalog,
    ) -> bool:
        """Learn one attributed response; True when a model learned it."""
        if record is None or offer_id is None:
            self.counts["unknown_decision"] += 1
            return False
        learning = catalog.learning
        if learning is None:
            return False
        chosen = next((o for o in record.offers if o.offer_id == offer_id), None)
        key = None if chosen is None else model_key(offer_id, chosen.channel)
        bins = (record.predictors or {}).get(key) if key is not None else None
        if key is None or bins is None:
            self.counts["not_offered"] += 1  # not chosen, or not adaptive when decided
            return False
        if repeat:
            self.counts["repeat"] += 1
            return False
        label = learning.label(outcome)
        if label is None:
            self.counts["unlabelled"] += 1
            return False
        preds = learning.predictors.get(offer_id)
        if preds is None or len(preds) != len(bins):
            self.counts["not_offered"] += 1  # the catalogue changed the model since
            return False
        if not self.models.learn_one(key, [p.name for p in preds], bins, label):
            self.counts["frozen"] += 1
            return False
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

    def keys(self, catalog: Catalog) -> list[str]:
        """The adaptive models of a catalogue: one per adaptive offer × channel."""
        if catalog.learning is None:
            return []
        return [
            model_key(o.id, ch)
            for o in catalog.offers.values()
            if catalog.learning.is_adaptive(o.id)
            for ch in dict.fromkeys(t.channel for t in o.treatments)
        ]

    def summaries(self, catalog: Catalog, key: str | None = None) -> list[dict[str, Any]]:
        keys = self.keys(catalog) if key is None else [key]
        return [self.models.summary(k) for k in keys]
