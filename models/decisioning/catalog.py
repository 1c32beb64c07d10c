"""The catalogue: channels, offers, engagement and contact policies, arbitration.

:func:`load_catalog` reads the YAML/JSON format documented in
``docs/catalog.md`` (and by example in ``models/demo/catalog.yaml``), checks
every part of it, and raises :class:`~models.errors.CatalogError` whose
``field`` names the place at fault, e.g.
``offers[credit_card].eligibility[no_recent_credit_fail].exclude_when.fact``.

Everything a decision needs is precomputed here, once: rules are compiled to
closures, and for each channel (and placement) there is a ready list of
:class:`CandidateSpec` — one per offer × treatment — that already carries the
rules, contact policies and static context weights that apply to it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from models.decisioning.experiments import NO_EXPERIMENTS, Experiments, load_experiments
from models.decisioning.policies import ContactPolicy, parse_contact_policy
from models.decisioning.rules import (
    STAGES,
    Condition,
    OfferSelector,
    Predicate,
    Rule,
    check_id,
    compile_condition,
    compile_rule,
    fail,
    parse_selector,
)
from models.errors import CatalogError
from models.learning.adaptive import LearningConfig, load_learning

CHANNEL_KINDS = ("inbound", "outbound")
IMPRESSION_MODES = ("on_decide", "events")
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel and what one contact on it costs."""

    name: str
    kind: str  # inbound (the customer came to us) or outbound (we reach out)
    cost: float
    placements: tuple[str, ...]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "cost": self.cost}
        if self.placements:
            out["placements"] = list(self.placements)
        return out


@dataclass(frozen=True, slots=True)
class Treatment:
    """How an offer is rendered on one channel (and optionally one placement)."""

    id: str
    channel: str
    placement: str | None
    content: str | None  # a reference into the content system; opaque here

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "channel": self.channel}
        if self.placement is not None:
            out["placement"] = self.placement
        if self.content is not None:
            out["content"] = self.content
        return out


@dataclass(frozen=True, slots=True)
class ContextWeight:
    """A factor of C: ``weight`` applies where channel/placement/offers/``when`` all match."""

    weight: float
    id: str | None
    channel: str | None
    placement: str | None
    selector: OfferSelector | None
    condition: Condition | None
    spec: dict

    def fits(self, offer: Offer, treatment: Treatment) -> bool:
        """The static part of the match, decided once at load time."""
        if self.channel is not None and treatment.channel != self.channel:
            return False
        if self.placement is not None and treatment.placement != self.placement:
            return False
        return self.selector is None or self.selector.matches(offer.id, offer.group, offer.tags)


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer or action, with its own rules and context weights."""

    id: str
    name: str
    group: str
    value: float  # V: economic value of an acceptance
    levers: float  # L: business weight
    tags: tuple[str, ...]
    start: float  # epoch seconds; the offer is active from start ...
    end: float  # ... until (excluding) end
    propensity: float | None  # a fixed P instead of the model's
    treatments: tuple[Treatment, ...]
    rules: tuple[Rule, ...]
    context_weights: tuple[ContextWeight, ...]
    dates: dict  # start/end as written, for to_dict()
    description: str | None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "group": self.group}
        if self.description is not None:
            out["description"] = self.description
        out.update(value=self.value, levers=self.levers, tags=list(self.tags))
        out.update(self.dates)
        if self.propensity is not None:
            out["propensity"] = self.propensity
        out["treatments"] = [t.to_dict() for t in self.treatments]
        if self.context_weights:
            out["context_weights"] = [copy.deepcopy(w.spec) for w in self.context_weights]
        for stage in STAGES:
            rules = [r.to_dict() for r in self.rules if r.stage == stage]
            if rules:
                out[stage] = copy.deepcopy(rules)
        return out


@dataclass(frozen=True, slots=True, eq=False)
class CandidateSpec:
    """One offer × treatment on a channel, precomputed.

    It is a :class:`models.decisioning.facts.Candidate`.
    """

    offer_id: str
    group: str
    channel: str
    placement: str | None
    treatment_id: str
    value: float
    tags: tuple[str, ...]
    content: str | None
    levers: float
    cost: float  # the channel's cost per contact
    propensity: float | None
    start: float
    end: float
    rules: tuple[Rule, ...]  # eligibility, applicability, suitability, in order
    # The same rules as (memo slot, excludes, rule); slot -1 = evaluate per candidate,
    # otherwise the rule reads no offer.* fact and is evaluated once per channel.
    checks: tuple[tuple[int, Predicate, Rule], ...]
    contact_policies: tuple[ContactPolicy, ...]
    contact_keys: tuple[tuple[ContactPolicy, Any], ...]  # each policy with this candidate's key
    static_weight: float  # product of the context weights without a condition
    weights: tuple[tuple[Predicate, float], ...]  # conditional context weights


@dataclass(frozen=True, slots=True)
class Arbitration:
    """How surviving candidates are weighed and when nothing is worth saying."""

    min_priority: float  # no action when net value (priority - channel cost) is below
    context_weights: tuple[ContextWeight, ...]
    fallback: tuple[dict, ...]  # {offer_id, channel, treatment} for the server's timeouts
    impressions: str  # on_decide: served offers count as impressions at once; events: wait

    def to_dict(self) -> dict:
        return {
            "min_priority": self.min_priority,
            "context_weights": [copy.deepcopy(w.spec) for w in self.context_weights],
            "fallback": [dict(f) for f in self.fallback],
            "impressions": self.impressions,
        }


class Catalog:
    """A validated catalogue, ready for fast decisions. Build it with :func:`load_catalog`."""

    def __init__(
        self,
        version: str,
        description: str | None,
        channels: dict[str, Channel],
        offers: dict[str, Offer],
        global_rules: tuple[Rule, ...],
        contact_policies: tuple[ContactPolicy, ...],
        arbitration: Arbitration,
        learning: LearningConfig | None = None,
        experiments: Experiments = NO_EXPERIMENTS,
    ) -> None:
        self.version = version
        self.experiments = experiments  # arms and the default control group (experiments.py)
        self.learning = learning  # adaptive models (models/learning/adaptive.py), or None
        self.description = description
        self.channels = channels
        self.offers = offers
        self.global_rules = global_rules
        self.contact_policies = contact_policies
        self.arbitration = arbitration
        self.rules = global_rules + tuple(r for o in offers.values() for r in o.rules)
        self.offer_info = {o.id: (o.group, o.tags) for o in offers.values()}
        self._groups = {o.id: o.group for o in offers.values()}
        self._candidates = self._index_candidates()

    def group_of(self, offer_id: str) -> str | None:
        return self._groups.get(offer_id)

    def candidates(self, channel: str, placement: str | None = None) -> tuple[CandidateSpec, ...]:
        """Candidates on ``channel``; with a placement, those for it or for any placement."""
        found = self._candidates.get((channel, placement))
        if found is None:  # a placement the channel does not declare
            every = self._candidates.get((channel, None), ())
            found = tuple(c for c in every if c.placement is None)
        return found

    def fallback_offers(self, channels: list[str] | tuple[str, ...]) -> list[dict]:
        """The configured fallback offers usable on any of ``channels``."""
        out = []
        for f in self.arbitration.fallback:
            if f["channel"] in channels:
                offer = self.offers[f["offer_id"]]
                t = next(t for t in offer.treatments if t.id == f["treatment"])
                out.append(
                    {"offer_id": offer.id, "group": offer.group, "channel": t.channel,
                     "treatment": t.id, "placement": t.placement, "content": t.content,
                     "value": offer.value}
                )  # fmt: skip
        return out

    def to_dict(self) -> dict:
        """A JSON-serialisable form that :func:`load_catalog` reads back."""
        out: dict[str, Any] = {"version": self.version}
        if self.description is not None:
            out["description"] = self.description
        out["channels"] = {name: ch.to_dict() for name, ch in self.channels.items()}
        out["offers"] = [o.to_dict() for o in self.offers.values()]
        out["policies"] = {
            stage: [r.to_dict() for r in self.global_rules if r.stage == stage] for stage in STAGES
        }
        out["contact_policies"] = [p.to_dict() for p in self.contact_policies]
        out["arbitration"] = self.arbitration.to_dict()
        if self.learning is not None:
            out["learning"] = self.learning.to_dict()
            for offer in out["offers"]:
                if offer["id"] in self.learning.offer_specs:
                    offer["adaptive"] = self.learning.offer_specs[offer["id"]]
        out.update(self.experiments.to_dict())
        return copy.deepcopy(out)

    def _index_candidates(self) -> dict[tuple[str, str | None], tuple[CandidateSpec, ...]]:
        by_channel: dict[str, list[CandidateSpec]] = {ch: [] for ch in self.channels}
        weights = self.arbitration.context_weights
        for offer in self.offers.values():
            rules = tuple(
                r
                for stage in STAGES
                for r in (*self.global_rules, *offer.rules)
                if r.stage == stage
                and (r.selector is None or r.selector.matches(offer.id, offer.group, offer.tags))
            )
            checks = tuple((-1 if r.per_candidate else r.index, r.excludes, r) for r in rules)
            for t in offer.treatments:
                policies = tuple(
                    p for p in self.contact_policies
                    if p.covers(offer.id, offer.group, offer.tags, t.channel)
                )  # fmt: skip
                static, dynamic = 1.0, []
                for w in (*weights, *offer.context_weights):
                    if not w.fits(offer, t):
                        continue
                    if w.condition is None:
                        static *= w.weight
                    else:
                        dynamic.append((w.condition.test, w.weight))
                by_channel[t.channel].append(
                    CandidateSpec(
                        offer_id=offer.id, group=offer.group, channel=t.channel,
                        placement=t.placement, treatment_id=t.id, value=offer.value,
                        tags=offer.tags, content=t.content, levers=offer.levers,
                        cost=self.channels[t.channel].cost, propensity=offer.propensity,
                        start=offer.start, end=offer.end, rules=rules, checks=checks,
                        contact_policies=policies,
                        contact_keys=tuple(
                            (p, p.key(offer.id, offer.group, t.channel)) for p in policies
                        ),
                        static_weight=static, weights=tuple(dynamic),
                    )
                )  # fmt: skip
        index: dict[tuple[str, str | None], tuple[CandidateSpec, ...]] = {}
        for name, cands in by_channel.items():
            index[(name, None)] = tuple(cands)
            for placement in self.channels[name].placements:
                index[(name, placement)] = tuple(
                    c for c in cands if c.placement is None or c.placement == placement
                )
        return index


# -- loading ------------------------------------------------------------------------


def load_catalog(source: str | Path | dict, previous: Catalog | None = None) -> Catalog:
    """Load and validate a catalogue from a YAML/JSON file path, YAML text, or a dict.

    ``previous``: the catalogue this one replaces; its experiments' bucket
    allocations carry over, so changed shares move as few customers as possible.
    """
    if isinstance(source, dict):
        data = source
    elif isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read catalogue {path}: {exc.strerror or exc}") from None
        data = _parse_text(text, json_=path.suffix == ".json")
    elif isinstance(source, str):
        data = _parse_text(source, json_=False)
    else:
        raise CatalogError("a catalogue source must be a path, YAML text or a mapping")
    return _Loader(data, previous.experiments if previous is not None else None).load()


def _looks_like_path(text: str) -> bool:
    if "\n" in text:
        return False
    if text.endswith((".yaml", ".yml", ".json")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. one line of YAML longer than a file name may be
        return False


def _parse_text(text: str, json_: bool) -> Any:
    try:
        return json.loads(text) if json_ else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise CatalogError(f"catalogue is not valid {'JSON' if json_ else 'YAML'}: {exc}") from None


def _keys(spec: Any, field: str, allowed: set[str] | frozenset[str], what: str) -> dict:
    if not isinstance(spec, dict):
        raise fail(field, f"{what} must be a mapping")
    unknown = set(spec) - allowed
    if unknown:
        raise fail(field, f"unknown key(s) {sorted(map(str, unknown))}; expected {sorted(allowed)}")
    return spec


def _number(value: Any, field: str, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise fail(field, "must be a number")
    if value < minimum or (strict and value == minimum) or value == _INF:
        raise fail(field, f"must be {'>' if strict else '>='} {minimum:g} and finite")
    return float(value)


def _optional_str(spec: dict, key: str, field: str) -> str | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise fail(f"{field}.{key}", "must be a non-empty string")
    return value


def _instant(value: Any, field: str, end: bool) -> tuple[float, str]:
    """Epoch seconds and canonical text of a date or datetime (UTC when no zone).

    A bare date as ``end`` includes that whole day.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else None
            if value is None:
                value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise fail(field, f"cannot parse date {text!r}; use 2025-01-31 or ISO 8601") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp(), value.isoformat()
    if isinstance(value, date):
        day = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        if end:
            day += timedelta(days=1)
        return day.timestamp(), value.isoformat()
    raise fail(field, "must be a date (2025-01-31) or an ISO 8601 datetime")


class _Loader:
    """One pass of validation over a parsed catalogue document."""

    TOP = frozenset(
        {"version", "description", "channels", "offers", "policies", "contact_policies",
         "arbitration", "learning", "experiments", "control_group"}
    )  # fmt: skip
    OFFER = frozenset(
        {"id", "name", "description", "group", "value", "levers", "tags", "start", "end",
         "propensity", "treatments", "context_weights", "adaptive", *STAGES}
    )  # fmt: skip

    def __init__(self, data: Any, previous: Experiments | None = None) -> None:
        self.data = _keys(data, "catalog", self.TOP, "a catalogue")
        self.previous = previous
        self.channels: dict[str, Channel] = {}
        self.groups: dict[str, str] = {}  # offer id -> group, for group.* facts
        self.tags: set[str] = set()
        self.rule_count = 0

    def load(self) -> Catalog:
        version = self.data.get("version")
        if not isinstance(version, str) or not version.strip():
            raise fail("version", "version is required and must be a string (quote numbers)")
        description = _optional_str(self.data, "description", "catalog")
        self.channels = self._channels(self.data.get("channels"))
        raw_offers = self.data.get("offers")
        if not isinstance(raw_offers, list) or not raw_offers:
            raise fail("offers", "offers must be a non-empty list")
        self._index_offers(raw_offers)
        global_rules = self._global_rules(self.data.get("policies"))
        offers = {spec["id"]: self._offer(spec, f"offers[{spec['id']}]") for spec in raw_offers}
        info = {o.id: (o.group, o.tags) for o in offers.values()}
        policies = self._contact_policies(self.data.get("contact_policies"), info)
        arbitration = self._arbitration(self.data.get("arbitration"), offers)
        learning = load_learning(
            self.data.get("learning"), {s["id"]: s for s in raw_offers}, self.groups.get
        )
        experiments = load_experiments(self.data, self.channels, self.previous)
        return Catalog(
            version, description, self.channels, offers, global_rules, policies, arbitration,
            learning, experiments,
        )  # fmt: skip

    # -- channels -----------------------------------------------------------------

    def _channels(self, raw: Any) -> dict[str, Channel]:
        if not isinstance(raw, dict) or not raw:
            raise fail("channels", "channels must be a non-empty mapping of name -> settings")
        out = {}
        for name, spec in raw.items():
            field = f"channels[{name}]"
            check_id(name, field)
            _keys(spec, field, {"kind", "cost", "placements"}, "a channel")
            kind = spec.get("kind")
            if kind not in CHANNEL_KINDS:
                raise fail(f"{field}.kind", f"kind must be one of {list(CHANNEL_KINDS)}")
            cost = _number(spec.get("cost", 0.0), f"{field}.cost")
            placements = spec.get("placements", [])
            if not isinstance(placements, list):
                raise fail(f"{field}.placements", "placements must be a list of names")
            for i, p in enumerate(placements):
                check_id(p, f"{field}.placements[{i}]")
            if len(set(placements)) != len(placements):
                raise fail(f"{field}.placements", "placements must be unique")
            out[name] = Channel(name, kind, cost, tuple(placements))
        return out

    # -- offers -------------------------------------------------------------------

    def _index_offers(self, raw: list) -> None:
        """First pass: ids, groups and tags, which rules and selectors refer to."""
        for i, spec in enumerate(raw):
            _keys(spec, f"offers[{i}]", self.OFFER, "an offer")
            oid = check_id(spec.get("id"), f"offers[{i}].id")
            if oid in self.groups:
                raise fail(f"offers[{oid}].id", f"duplicate offer id {oid!r}")
            field = f"offers[{oid}]"
            self.groups[oid] = check_id(spec.get("group"), f"{field}.group")
            tags = spec.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise fail(f"{field}.tags", "tags must be a list of non-empty strings")
            self.tags.update(tags)

    def _offer(self, spec: dict, field: str) -> Offer:
        oid = spec["id"]
        name = _optional_str(spec, "name", field) or oid
        value = _number(spec.get("value"), f"{field}.value")
        levers = _number(spec.get("levers", 1.0), f"{field}.levers")
        propensity = spec.get("propensity")
        if propensity is not None:
            propensity = _number(propensity, f"{field}.propensity")
            if propensity > 1:
                raise fail(f"{field}.propensity", "propensity must be between 0 and 1")
        start, end, dates = -_INF, _INF, {}
        if spec.get("start") is not None:
            start, dates["start"] = _instant(spec["start"], f"{field}.start", end=False)
        if spec.get("end") is not None:
            end, dates["end"] = _instant(spec["end"], f"{field}.end", end=True)
        if start >= end:
            raise fail(f"{field}.end", "end must be after start")
        treatments = self._treatments(spec.get("treatments"), f"{field}.treatments")
        rules = []
        for stage in STAGES:
            rules.extend(self._rules(spec.get(stage), f"{field}.{stage}", stage, oid))
        weights = tuple(
            self._context_weight(w, f"{field}.context_weights[{i}]", offer_level=True)
            for i, w in enumerate(
                self._list(spec.get("context_weights"), f"{field}.context_weights")
            )
        )
        return Offer(
            id=oid, name=name, group=spec["group"], value=value, levers=levers,
            tags=tuple(spec.get("tags", [])), start=start, end=end, propensity=propensity,
            treatments=treatments, rules=tuple(rules), context_weights=weights, dates=dates,
            description=_optional_str(spec, "description", field),
        )  # fmt: skip

    def _treatments(self, raw: Any, field: str) -> tuple[Treatment, ...]:
        if not isinstance(raw, list) or not raw:
            raise fail(field, "an offer needs a non-empty list of treatments")
        out, seen = [], set()
        for i, spec in enumerate(raw):
            _keys(spec, f"{field}[{i}]", {"id", "channel", "placement", "content"}, "a treatment")
            tid = check_id(spec.get("id"), f"{field}[{i}].id")
            tfield = f"{field}[{tid}]"
            if tid in seen:
                raise fail(f"{tfield}.id", f"duplicate treatment id {tid!r} in this offer")
            seen.add(tid)
            channel = spec.get("channel")
            if channel not in self.channels:
                raise fail(
                    f"{tfield}.channel",
                    f"unknown channel {channel!r}; the catalogue declares {sorted(self.channels)}",
                )
            placement = _optional_str(spec, "placement", tfield)
            if placement is not None and placement not in self.channels[channel].placements:
                raise fail(
                    f"{tfield}.placement",
                    f"channel {channel!r} declares no placement {placement!r}",
                )
            out.append(Treatment(tid, channel, placement, _optional_str(spec, "content", tfield)))
        return tuple(out)

    # -- engagement rules ---------------------------------------------------------

    @staticmethod
    def _list(raw: Any, field: str) -> list:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise fail(field, "must be a list")
        return raw

    def _rules(self, raw: Any, field: str, stage: str, offer_id: str | None) -> list[Rule]:
        out: list[Rule] = []
        seen: set[str] = set()
        for i, spec in enumerate(self._list(raw, field)):
            if not isinstance(spec, dict):
                raise fail(f"{field}[{i}]", "a rule must be a mapping")
            rid = check_id(spec.get("id"), f"{field}[{i}].id")
            rfield = f"{field}[{rid}]"
            if rid in seen:
                raise fail(f"{rfield}.id", f"duplicate rule id {rid!r}")
            seen.add(rid)
            selector = None
            if offer_id is None:
                selector = parse_selector(
                    spec.get("applies_to"), f"{rfield}.applies_to", set(self.groups),
                    set(self.groups.values()), self.tags,
                )  # fmt: skip
            out.append(
                compile_rule(
                    spec, stage, rfield, self.rule_count, self.groups.get, selector, offer_id
                )
            )
            self.rule_count += 1
        return out

    def _global_rules(self, raw: Any) -> tuple[Rule, ...]:
        if raw is None:
            return ()
        _keys(raw, "policies", set(STAGES), "policies")
        rules: list[Rule] = []
        for stage in STAGES:
            rules.extend(self._rules(raw.get(stage), f"policies.{stage}", stage, None))
        ids = [r.id for r in rules]
        dup = next((r for r in ids if ids.count(r) > 1), None)
        if dup is not None:
            raise fail("policies", f"rule id {dup!r} is used in more than one stage")
        return tuple(rules)

    # -- contact policies ---------------------------------------------------------

    def _contact_policies(self, raw: Any, info: dict) -> tuple[ContactPolicy, ...]:
        out: list[ContactPolicy] = []
        seen: set[str] = set()
        for i, spec in enumerate(self._list(raw, "contact_policies")):
            if not isinstance(spec, dict):
                raise fail(f"contact_policies[{i}]", "a contact policy must be a mapping")
            pid = check_id(spec.get("id"), f"contact_policies[{i}].id")
            if pid in seen:
                raise fail(f"contact_policies[{pid}].id", f"duplicate contact policy id {pid!r}")
            seen.add(pid)
            out.append(
                parse_contact_policy(
                    spec, f"contact_policies[{pid}]", len(out), self.channels, info
                )
            )
        return tuple(out)

    # -- arbitration --------------------------------------------------------------

    def _context_weight(self, spec: Any, field: str, offer_level: bool) -> ContextWeight:
        allowed = {"id", "weight", "channel", "placement", "when"}
        if not offer_level:
            allowed.add("applies_to")
        _keys(spec, field, allowed, "a context weight")
        wid = spec.get("id")
        if wid is not None:
            check_id(wid, f"{field}.id")
        weight = _number(spec.get("weight"), f"{field}.weight", strict=True)
        channel = spec.get("channel")
        if channel is not None and channel not in self.channels:
            raise fail(f"{field}.channel", f"unknown channel {channel!r}")
        placement = spec.get("placement")
        if placement is not None:
            declared = {p for ch in self.channels.values() for p in ch.placements}
            if channel is not None:
                declared = set(self.channels[channel].placements)
            if placement not in declared:
                raise fail(f"{field}.placement", f"no channel declares placement {placement!r}")
        selector = None
        if not offer_level:
            selector = parse_selector(
                spec.get("applies_to"), f"{field}.applies_to", set(self.groups),
                set(self.groups.values()), self.tags,
            )  # fmt: skip
        condition = None
        if spec.get("when") is not None:
            condition = compile_condition(spec["when"], f"{field}.when", self.groups.get)
        unconditional = channel is None and placement is None and condition is None
        if unconditional and selector is None and not offer_level:
            raise fail(
                field, "a global context weight needs channel, placement, applies_to or when"
            )
        return ContextWeight(weight, wid, channel, placement, selector, condition, dict(spec))

    def _arbitration(self, raw: Any, offers: dict[str, Offer]) -> Arbitration:
        raw = {} if raw is None else raw
        _keys(raw, "arbitration", {"min_priority", "context_weights", "fallback", "impressions"},
              "arbitration")  # fmt: skip
        min_priority = _number(raw.get("min_priority", 0.0), "arbitration.min_priority")
        weights = tuple(
            self._context_weight(w, f"arbitration.context_weights[{i}]", offer_level=False)
            for i, w in enumerate(
                self._list(raw.get("context_weights"), "arbitration.context_weights")
            )
        )
        impressions = raw.get("impressions", "on_decide")
        if impressions not in IMPRESSION_MODES:
            raise fail("arbitration.impressions", f"must be one of {list(IMPRESSION_MODES)}")
        fallback = []
        for i, spec in enumerate(self._list(raw.get("fallback"), "arbitration.fallback")):
            field = f"arbitration.fallback[{i}]"
            _keys(spec, field, {"offer_id", "channel", "treatment"}, "a fallback")
            offer = offers.get(spec.get("offer_id"))
            if offer is None:
                raise fail(f"{field}.offer_id", f"unknown offer {spec.get('offer_id')!r}")
            channel = spec.get("channel")
            usable = [t for t in offer.treatments if t.channel == channel]
            if not usable:
                raise fail(
                    f"{field}.channel", f"offer {offer.id!r} has no treatment on {channel!r}"
                )
            tid = spec.get("treatment", usable[0].id)
            if tid not in {t.id for t in usable}:
                raise fail(
                    f"{field}.treatment", f"no treatment {tid!r} of {offer.id!r} on {channel!r}"
                )
            fallback.append({"offer_id": offer.id, "channel": channel, "treatment": tid})
        return Arbitration(min_priority, weights, tuple(fallback), impressions)
