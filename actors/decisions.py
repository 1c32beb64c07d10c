"""``DecisionEngine``: a shard's catalogue, propensity model and decision log.

It decides for a batch of (profile, request) pairs with one model run
(:func:`models.decisioning.arbitration.decide_many`), logs each
:class:`~models.decisioning.record.DecisionRecord`, counts the chosen offers
as impressions when the catalogue says so, and attributes ``response``
events to logged decisions; the shard's report counters count both
(``actors/reporting.py``). It journals :class:`DecisionsMade`,
:class:`CatalogActivated` and :class:`ModelActivated`, and appends every
decision and attributed outcome to the shard's
:class:`~actors.history.InteractionHistory`.

Experiments (``models/decisioning/experiments.py``) run inside
``decide_many``; the engine keeps the extra scorers that ``model:<version>``
arms need, loaded when a catalogue naming them is activated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.durable import JournalRecord, journal_record
from actors.history import InteractionHistory, row_context
from actors.journal import Deferred, PackedItems
from actors.learning import Learning
from actors.reporting import ReportBook
from models.customer.events import Event
from models.customer.profile import Profile
from models.decisioning.arbitration import decide_many
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.log import DecisionLog
from models.decisioning.record import DecisionRecord, from_builtins, to_builtins
from models.decisioning.request import DecideRequest
from models.errors import RtimError
from models.learning.adaptive import DEFAULT_POSITIVE
from models.learning.registry import scorer_for_version
from models.learning.scoring import PriorScorer
from models.settings import Settings

log = logging.getLogger("rtim.decisions")


@journal_record("dec")
@dataclass(frozen=True, slots=True)
class DecisionsMade(JournalRecord):
    """Decisions made at ``now``: ``records`` is one msgpack blob of the records
    (:func:`decisions_made`; journals written before it hold a list of their
    :func:`~models.decisioning.record.to_builtins` forms, still replayed)."""

    now: float
    records: bytes | list[dict]

    def decoded(self) -> list[DecisionRecord]:
        if isinstance(self.records, bytes):
            return _decode_records(self.records)
        return [from_builtins(data) for data in self.records]


_encode = msgspec.msgpack.Encoder().encode  # a record, or a list of packed ones
_decode_records = msgspec.msgpack.Decoder(list[DecisionRecord]).decode


def decisions_made(
    now: float, records: list[DecisionRecord], encoded: dict[int, bytes] | None = None
) -> DecisionsMade:
    """The journal record of ``records`` (the explain trace is never journalled).

    Each record is packed once, in C; ``encoded`` (when given) receives the
    bytes of each record without a trace, by ``id(record)``, for the decide
    answer to reuse instead of packing the same record again.
    """
    blobs = []
    for r in records:
        blob = _encode(r if r.trace is None else msgspec.structs.replace(r, trace=None))
        if encoded is not None and r.trace is None:
            encoded[id(r)] = blob
        blobs.append(msgspec.Raw(blob))
    return DecisionsMade(now, _encode(blobs))


@journal_record("cat")
@dataclass(frozen=True, slots=True)
class CatalogActivated(JournalRecord):
    catalog: dict


@journal_record("mdl")
@dataclass(frozen=True, slots=True)
class ModelActivated(JournalRecord):
    version: str


def _packed_later(build: Callable[[], list[bytes]]) -> Deferred:
    """The decision log's records, packed in the snapshot writer's thread."""
    return Deferred(lambda: PackedItems(build()))


class DecisionEngine:
    """Decides for one shard's customers and remembers what it decided."""

    def __init__(
        self,
        settings: Settings,
        catalog: dict | None,
        model_version: str | None,
        learning: Learning | None = None,
        reports: ReportBook | None = None,
        history: InteractionHistory | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.arm_scorers: dict[str, Any] = {}  # model:<version> arms' scorers
        self.learning = learning or Learning(settings.decision_log_size)
        self.reports = reports or ReportBook(settings.report_retention_h)
        # Start from what the coordinator says is active; the journal may hold
        # a newer activation, which recovery applies on top.
        self.catalog: Catalog = load_catalog(catalog or settings.catalog)
        self.learning.configure(self.catalog)
        self._load_arm_scorers()
        self.model_error: str | None = None
        self.scorer: Any = PriorScorer()
        self.model_version: str = self.scorer.version
        self.activate_model(model_version or settings.model_version, strict=False)
        self.log = DecisionLog(settings.decision_log_size)
        self.decisions = 0

    # -- state ------------------------------------------------------------------------

    def reset(self) -> None:
        self.log = DecisionLog(self.settings.decision_log_size)

    def load_snapshot(self, state: dict) -> None:
        for data in state.get("decisions", []):
            self.log.add(from_builtins(data))
        if state.get("catalog"):
            self.activate_catalog(state["catalog"])
        if state.get("model_version"):
            self.activate_model(state["model_version"], strict=False)

    def snapshot(self) -> dict[str, Any]:
        return {
            "decisions": _packed_later(self.log.captured()),
            "catalog": self.catalog.to_dict(),
            "model_version": self.model_version,
        }

    # -- catalogue and model ----------------------------------------------------------

    def activate_catalog(self, data: dict) -> Catalog:
        """Switch to a catalogue (raises ``CatalogError`` for an invalid one)."""
        catalog = load_catalog(data)
        if catalog.version != self.catalog.version:
            self.catalog = catalog
            self.learning.configure(catalog)
            self._load_arm_scorers()
        return catalog

    def _load_arm_scorers(self) -> None:
        """Load the model versions of ``model:<version>`` arms (a missing one is logged;
        its arm then scores with the active model, and its records say so)."""
        scorers = {}
        for version in self.catalog.experiments.model_versions:
            try:
                scorers[version] = (
                    self.arm_scorers.get(version)
                    or scorer_for_version(
                        self.settings.model_registry, version, self.catalog.group_of
                    )[0]
                )
            except RtimError as exc:
                log.error("experiment arm model %r failed to load: %s", version, exc.message)
        self.arm_scorers = scorers

    def activate_model(self, version: str, strict: bool = True) -> str:
        """Load and switch to a model version ("" = newest in the registry).

        ``strict=False`` never raises: a model file that fails to load leaves
        the current scorer in place and says why in :attr:`model_error` (a
        shard must not crash-loop on a bad file).
        """
        if version and version == self.model_version and self.model_error is None:
            return version
        try:
            self.scorer, self.model_version = scorer_for_version(
                self.settings.model_registry, version, self.catalog.group_of
            )
        except RtimError as exc:
            if strict:
                raise
            self.model_error = f"model {version!r} failed to load: {exc.message}"
            log.error("%s", self.model_error)
            return self.model_version
        self.model_error = None
        return self.model_version

    # -- deciding ---------------------------------------------------------------------

    def decide(
        self, items: list[tuple[Profile, DecideRequest]], now: float, packed: list[bytes]
    ) -> list[DecisionRecord]:
        """One decision per item; impressions recorded on the given profiles.

        ``packed``: each item's profile as the store held it before this call
        (the history row's context; see :func:`~actors.history.row_context`).
        """
        if not items:
            return []
        learner = self.learning.models if self.catalog.learning is not None else None
        history = self.history
        contexts = None
        if history is not None and self.settings.history_context:
            contexts = [row_context(b, r) for b, (_, r) in zip(packed, items)]
        records = decide_many(
            items, self.catalog, self.scorer, now, self.settings.session_gap_s, learner,
            self.arm_scorers,
        )  # fmt: skip
        on_decide = self.catalog.arbitration.impressions == "on_decide"
        for (profile, req), record in zip(items, records):
            record.request_key = req.idempotency_key
            record.impressions = on_decide and bool(record.offers)
            self._log(record, profile, now)
        self.reports.decided(records, self.catalog)
        if history is not None:
            history.add_decisions(records, contexts)
        self.decisions += len(records)
        return records

    def note_fallbacks(self, records: list[DecisionRecord]) -> None:
        """Fallback answers an ingress gave for this shard's customers: log and history."""
        for record in records:
            self.log.add(record)
        if self.history is not None:
            self.history.add_decisions(records, None)
            self.history.flush()

    def flush_history(self) -> None:
        if self.history is not None:
            self.history.flush()

    def replay(self, rec: DecisionsMade, profile_of: Any) -> list[Profile]:
        """Re-log journalled decisions; return the profiles whose impressions changed."""
        touched: dict[str, Profile] = {}
        for record in rec.decoded():
            cid = record.customer_id
            profile = None
            if record.impressions:
                profile = touched.get(cid) or profile_of(cid)
                touched[cid] = profile
            self._log(record, profile, rec.now)
            self.reports.decided([record], self.catalog)
            if self.history is not None:
                self.history.add_recovered(record)
        return list(touched.values())

    def _log(self, record: DecisionRecord, profile: Profile | None, now: float) -> None:
        self.log.add(record)
        self.learning.note(record)
        if record.impressions and profile is not None:
            for o in record.offers:
                profile.record_contact(now, o.offer_id, o.channel, "impression")

    def attribute(self, ev: Event) -> Event:
        """Tie a response to its logged decision; fill in the offer it concerns.

        The adaptive model of the offer learns from it (``actors/learning.py``).
        """
        learning = self.catalog.learning
        if learning is not None and ev.type == learning.goal:
            self.learning.goal(ev.customer_id, ev.ts, self.log, self.catalog)
        if ev.type != "response" or ev.decision_id is None:
            return ev
        outcome = ev.attributes["outcome"]
        record = self.log.get(ev.decision_id)
        if record is not None and record.customer_id != ev.customer_id:
            record = None
        before = len(record.outcomes) if record is not None else 0
        offer = self.log.attribute(ev.decision_id, ev.customer_id, ev.offer_id, outcome, ev.ts)
        if record is not None:
            self.reports.attributed(record, before, self.catalog)
        self.learning.learn(record, offer, outcome, self.catalog)
        if self.history is not None:
            positive = outcome in (learning.positive if learning is not None else DEFAULT_POSITIVE)
            self.history.add_outcome(
                record or _Unlogged(ev.decision_id, ev.customer_id),
                offer if offer is not None else ev.offer_id, outcome, ev.ts, positive,
            )  # fmt: skip
        if offer is not None and ev.offer_id is None:
            return ev._replace(offer_id=offer)
        return ev

    def decided_before(self, req: DecideRequest) -> DecisionRecord | None:
        """The logged decision for this request's customer and idempotency key, if any."""
        if req.idempotency_key is None:
            return None
        return self.log.keyed(req.customer_id, req.idempotency_key)

    def decisions_of(self, customer_id: str) -> list[dict]:
        """Journal forms of a customer's logged decisions (handed over with a merge)."""
        return [to_builtins(r) for r in self.log.records() if r.customer_id == customer_id]

    def release(self, customer_id: str) -> None:
        """A merged-away customer's decisions left with the profile."""
        self.learning.latest.pop(customer_id, None)
        self.log.erase(customer_id)

    def adopt(self, decisions: list[dict], survivor: str) -> None:
        """Log an absorbed customer's decisions under the survivor (idempotent).

        A response to one of them, sent later under either id, is attributed
        here and teaches the models with the predictors the decision saw.
        """
        for data in decisions:
            record = from_builtins(data)
            if self.log.get(record.decision_id) is not None:
                continue  # delivered twice (a retried hand-over)
            record.customer_id = survivor
            self.log.add(record)
            self.learning.note(record)

    def erase(self, customer_id: str, history: bool = True) -> int:
        """Forget a customer's decisions; ``history``: also rewrite the history files
        now (recovery; a serving shard erases them off its loop, see the shard)."""
        self.learning.latest.pop(customer_id, None)  # learned counts name no customer
        erased = self.log.erase(customer_id)
        if history and self.history is not None:
            erased += self.history.erase(customer_id)
        return erased

    def entry(self, decision_id: str) -> dict[str, Any] | None:
        record = self.log.get(decision_id)
        return None if record is None else record.log_entry()


@dataclass(frozen=True, slots=True)
class _Unlogged:
    """A decision no longer in the in-memory log: its outcome row still goes to the history."""

    decision_id: str
    customer_id: str

    def value_of(self, offer_id: str | None) -> None:
        return None
