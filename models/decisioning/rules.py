"""The rule language: declarative conditions over facts, compiled to closures.

A condition is plain data, never code that is ``eval``-ed::

    {fact: "since.credit_check:fail", op: "<", value: "90d"}
    {all: [cond, ...]}   {any: [cond, ...]}   {not: cond}

Facts are named by the shared vocabulary of :mod:`models.decisioning.facts`. Operators:
``== != < <= > >= in not_in contains exists missing`` (YAML-friendly
aliases ``eq ne lt lte gt gte``). Durations (``"5m"``, ``"90d"``) are allowed
as values of facts that count seconds (``since.*``, ``offer.since_*``,
``session.age``).

Missing facts: a fact that is ``None`` (never happened, attribute unset) makes
every comparison false, ``!=``, ``not_in`` and ``contains`` included; only
``missing`` is true for it. So ``since.complaint < 5m`` is false for a
customer who never complained, and ``require: attr.income >= 60000`` excludes
a customer whose income is unknown. Comparing across types (a string
attribute with ``<`` a number) is false as well, never an error.

Each engagement :class:`Rule` is compiled once, at catalogue load, into a
predicate ``excludes(profile, context, candidate, now) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from models.customer.profile import Profile
from models.decisioning.facts import UnknownFact, compile_fact, parse_duration
from models.errors import CatalogError

Predicate = Callable[[Profile, dict, Any, float], bool]

STAGES = ("eligibility", "applicability", "suitability")
EXCLUDE_WHEN, REQUIRE = "exclude_when", "require"

OPS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "exists", "missing"})
_ALIASES = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "le": "<=", "gt": ">", "gte": ">=",
            "ge": ">="}  # fmt: skip
_ORDERING = frozenset({"<", "<=", ">", ">="})
_NUMBER = (int, float)
_CONTAINER = (list, tuple, set, frozenset, str)
_SCALAR = (str, int, float, bool)
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def fail(field: str, message: str) -> CatalogError:
    """A :class:`CatalogError` whose message also names the place (for logs)."""
    return CatalogError(f"{field}: {message}", field)


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise fail(field, "must be an id of 1-128 letters, digits or _ . : -")
    return value


def is_seconds_fact(name: str) -> bool:
    """Facts whose value is a number of seconds, so a duration may stand for it."""
    return name.startswith("since.") or name in (
        "offer.since_impression",
        "offer.since_rejection",
        "session.age",
    )


def is_candidate_fact(name: str) -> bool:
    """Facts that differ between candidates shown on the same channel.

    Every other fact depends only on the profile and the per-channel context,
    so a rule reading only those is evaluated once per channel per decision.
    """
    return name.startswith(("offer.", "group."))


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition and what it reads."""

    test: Predicate
    per_candidate: bool  # reads offer.* / group.* facts


def compile_condition(
    spec: Any, field: str, group_of: Callable[[str], str | None] | None = None
) -> Condition:
    """Compile a condition; raise :class:`CatalogError` naming ``field`` if invalid."""
    if not isinstance(spec, dict):
        raise fail(field, "a condition must be a mapping: {fact, op, value} or all/any/not")
    combinators = [k for k in ("all", "any", "not") if k in spec]
    if combinators:
        if len(spec) != 1:
            raise fail(field, f"{combinators[0]!r} must be the only key of its condition")
        key = combinators[0]
        body = spec[key]
        if key == "not":
            inner = compile_condition(body, f"{field}.not", group_of)
            t = inner.test
            return Condition(lambda p, c, o, n: not t(p, c, o, n), inner.per_candidate)
        if not isinstance(body, list) or not body:
            raise fail(f"{field}.{key}", "must be a non-empty list of conditions")
        parts = [compile_condition(s, f"{field}.{key}[{i}]", group_of) for i, s in enumerate(body)]
        tests = tuple(c.test for c in parts)
        per_cand = any(c.per_candidate for c in parts)
        return Condition(_all(tests) if key == "all" else _any(tests), per_cand)
    return _compile_leaf(spec, field, group_of)


def _all(tests: tuple[Predicate, ...]) -> Predicate:
    if len(tests) == 1:
        return tests[0]

    def test(p: Profile, c: dict, o: Any, n: float) -> bool:
        # A plain loop: all(generator) allocates a generator on every call.
        for t in tests:  # noqa: SIM110
            if not t(p, c, o, n):
                return False
        return True

    return test


def _any(tests: tuple[Predicate, ...]) -> Predicate:
    if len(tests) == 1:
        return tests[0]

    def test(p: Profile, c: dict, o: Any, n: float) -> bool:
        for t in tests:  # noqa: SIM110
            if t(p, c, o, n):
                return True
        return False

    return test


def _compile_leaf(spec: dict, field: str, group_of: Callable | None) -> Condition:
    unknown = set(spec) - {"fact", "op", "value"}
    if unknown:
        raise fail(field, f"unknown key(s) {sorted(unknown)}; expected fact, op, value")
    name = spec.get("fact")
    if not isinstance(name, str) or not name:
        raise fail(f"{field}.fact", "fact is required (a fact name such as 'attr.age')")
    try:
        get = compile_fact(name, group_of)
    except UnknownFact as exc:
        raise fail(f"{field}.fact", str(exc)) from None
    raw_op = spec.get("op")
    op = _ALIASES.get(raw_op, raw_op) if isinstance(raw_op, str) else raw_op
    if op not in OPS:
        raise fail(f"{field}.op", f"unknown op {raw_op!r}; expected one of {sorted(OPS)}")
    if op in ("exists", "missing"):
        if spec.get("value") is not None:
            raise fail(f"{field}.value", f"op {op!r} takes no value")
        if op == "exists":
            return Condition(
                lambda p, c, o, n: get(p, c, o, n) is not None, is_candidate_fact(name)
            )
        return Condition(lambda p, c, o, n: get(p, c, o, n) is None, is_candidate_fact(name))
    value = _check_value(name, op, spec.get("value"), f"{field}.value")
    return Condition(_comparison(get, op, value), is_candidate_fact(name))


def _check_value(name: str, op: str, value: Any, field: str) -> Any:
    if value is None:
        raise fail(field, f"op {op!r} needs a value (test for an unset fact with op: missing)")
    seconds = is_seconds_fact(name)

    def scalar(v: Any, where: str) -> Any:
        if seconds and isinstance(v, str):
            try:
                return parse_duration(v)
            except ValueError as exc:
                raise fail(where, str(exc)) from None
        if not isinstance(v, _SCALAR):
            raise fail(where, "values must be strings, numbers or booleans (quote dates)")
        return v

    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise fail(field, f"op {op!r} needs a non-empty list")
        return frozenset(scalar(v, f"{field}[{i}]") for i, v in enumerate(value))
    value = scalar(value, field)
    if op in _ORDERING and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
        hint = " or a duration like '5m'" if seconds else ""
        raise fail(field, f"op {op!r} needs a number{hint}")
    return value


def _comparison(get: Callable, op: str, x: Any) -> Predicate:
    # One closure per operator keeps the hot path to a getter call and one test.
    if op == "==":
        return lambda p, c, o, n: get(p, c, o, n) == x
    if op == "!=":

        def ne(p: Profile, c: dict, o: Any, n: float) -> bool:
            v = get(p, c, o, n)
            return v is not None and v != x

        return ne
    if op in _ORDERING:
        return _ordering(get, op, x)
    if op in ("in", "not_in"):
        want = op == "in"

        def member(p: Profile, c: dict, o: Any, n: float) -> bool:
            v = get(p, c, o, n)
            if v is None:
                return False
            try:
                return (v in x) is want
            except TypeError:  # an unhashable fact value (a list)
                return False

        return member

    def contains(p: Profile, c: dict, o: Any, n: float) -> bool:
        v = get(p, c, o, n)
        if not isinstance(v, _CONTAINER):
            return False
        if isinstance(v, str):
            return isinstance(x, str) and x in v
        return x in v

    return contains


def _ordering(get: Callable, op: str, x: float) -> Predicate:
    if op == "<":
        return lambda p, c, o, n: isinstance(v := get(p, c, o, n), _NUMBER) and v < x
    if op == "<=":
        return lambda p, c, o, n: isinstance(v := get(p, c, o, n), _NUMBER) and v <= x
    if op == ">":
        return lambda p, c, o, n: isinstance(v := get(p, c, o, n), _NUMBER) and v > x
    return lambda p, c, o, n: isinstance(v := get(p, c, o, n), _NUMBER) and v >= x


@dataclass(frozen=True, slots=True)
class OfferSelector:
    """Which offers a global policy applies to: any listed id, group or tag."""

    offers: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    def matches(self, offer_id: str, group: str, tags: Iterable[str]) -> bool:
        return offer_id in self.offers or group in self.groups or not self.tags.isdisjoint(tags)

    def to_dict(self) -> dict:
        out = {}
        for key in ("offers", "groups", "tags"):
            values = getattr(self, key)
            if values:
                out[key] = sorted(values)
        return out


def parse_selector(
    spec: Any, field: str, offers: set[str], groups: set[str], tags: set[str]
) -> OfferSelector | None:
    """Parse ``applies_to: {offers, groups, tags}``; ``None`` (absent) means every offer."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not spec:
        raise fail(field, "applies_to must be a mapping with offers, groups and/or tags")
    unknown = set(spec) - {"offers", "groups", "tags"}
    if unknown:
        raise fail(field, f"unknown key(s) {sorted(unknown)}; expected offers, groups, tags")
    known = {"offers": offers, "groups": groups, "tags": tags}
    parsed: dict[str, frozenset[str]] = {}
    for key, values in spec.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise fail(f"{field}.{key}", "must be a list of strings")
        for i, v in enumerate(values):
            if v not in known[key]:
                raise fail(f"{field}.{key}[{i}]", f"no offer has {key[:-1]} {v!r}")
        parsed[key] = frozenset(values)
    return OfferSelector(**parsed)


@dataclass(frozen=True, slots=True)
class Rule:
    """One engagement rule: in its ``stage``, it removes an offer when it ``excludes``."""

    id: str
    stage: str
    reason: str
    mode: str  # EXCLUDE_WHEN or REQUIRE
    excludes: Predicate
    per_candidate: bool
    index: int  # position in the catalogue's rule table (a memo key per decision)
    selector: OfferSelector | None  # global rules only; None = every offer
    offer_id: str | None  # set for a rule written on one offer
    condition: dict  # as written, for to_dict()

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "reason": self.reason}
        if self.selector is not None:
            out["applies_to"] = self.selector.to_dict()
        out[self.mode] = self.condition
        return out


def compile_rule(
    spec: Any,
    stage: str,
    field: str,
    index: int,
    group_of: Callable[[str], str | None],
    selector: OfferSelector | None = None,
    offer_id: str | None = None,
) -> Rule:
    """Compile one rule mapping ``{id, reason, exclude_when | require}``."""
    if not isinstance(spec, dict):
        raise fail(field, "a rule must be a mapping with id, reason and exclude_when or require")
    allowed = {"id", "reason", EXCLUDE_WHEN, REQUIRE} | (
        {"applies_to"} if offer_id is None else set()
    )
    unknown = set(spec) - allowed
    if unknown:
        raise fail(field, f"unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
    reason = spec.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise fail(f"{field}.reason", "every rule needs a human-readable reason")
    modes = [m for m in (EXCLUDE_WHEN, REQUIRE) if m in spec]
    if len(modes) != 1:
        raise fail(field, "a rule needs exactly one of exclude_when or require")
    mode = modes[0]
    cond = compile_condition(spec[mode], f"{field}.{mode}", group_of)
    test = cond.test
    excludes: Predicate = (
        test if mode == EXCLUDE_WHEN else (lambda p, c, o, n: not test(p, c, o, n))
    )
    return Rule(
        id=spec["id"], stage=stage, reason=reason.strip(), mode=mode, excludes=excludes,
        per_candidate=cond.per_candidate, index=index, selector=selector, offer_id=offer_id,
        condition=spec[mode],
    )  # fmt: skip
