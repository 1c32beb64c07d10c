"""Model features: turning facts into the float32 matrix a propensity model reads.

A model's manifest lists its features; each is a fact name from
:mod:`models.decisioning.facts` plus an encoding. :class:`FeatureBuilder` compiles that list
once and then builds the matrix for all candidates of a decision in one call.
Training (:meth:`FeatureBuilder.rows_for_training`) goes through the very same
:meth:`FeatureBuilder.build`, so what a model was trained on is what it is served.

A feature is a dict (as stored in ``manifest.json``)::

    {"name": "attr.income", "kind": "log1p", "default": 40000, "cap": 1e7}

======== ======= =================================================================
kind     columns value
======== ======= =================================================================
numeric  1       ``float(value)`` (a bool is 0/1); ``default`` (0) when missing or
                 not a number; clipped to at most ``cap`` when given
log1p    1       ``log1p(value)`` after the numeric rules, negatives taken as 0
bool     1       1.0 when truthy, 0.0 when falsy, ``default`` (0) when missing
onehot   len     one column per entry of ``values`` (named ``<name>=<value>``);
         values  a list value (``holdings``, ``offer.tags``) sets one column per
                 element; ``default`` stands in for a missing value; a value
                 not listed sets no column
since    1       recency of a "seconds since" fact: ``exp(-seconds / scale)``
                 (``scale`` defaults to 7 days); ``default`` (0.0) when it
                 never happened
======== ======= =================================================================

Facts about the customer or the request (``attr.*``, ``count.*``, ``since.*``,
``session.*``, ``context.*`` ...) are read once per decision; facts about the
candidate (``offer.*``, ``group.*``, ``channel.*``, ``consent.channel``) once per
candidate. The contact-history facts (``offer.impressions.7d`` and kin) are
counted in one pass over the history for all candidates rather than one pass
per candidate; ``tests/models/test_features.py`` checks that this gives the
same values as the per-candidate getters of :mod:`models.decisioning.facts`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from models.customer.profile import IMPRESSION, Profile
from models.decisioning.facts import Candidate, Getter, UnknownFact, compile_fact, parse_duration
from models.errors import ModelError

KINDS = ("numeric", "log1p", "bool", "onehot", "since")
_SPEC_KEYS = frozenset({"name", "kind", "default", "values", "cap", "scale", "description"})
DEFAULT_SINCE_SCALE_S = 7 * 86400.0

# Fact heads whose value depends on the candidate, not just the customer.
_CANDIDATE_HEADS = ("offer", "group", "channel")

# A batch getter returns one raw value per candidate in one call.
BatchGetter = Callable[[Profile, dict, Sequence[Candidate], float], list]
# A writer encodes raw values into a flat float32 buffer (see "encodings").
Writer = Callable[[array, int, Sequence], None]


@dataclass(frozen=True)
class FeatureSpec:
    """One manifest feature: a fact name and how to encode its value."""

    name: str
    kind: str
    default: Any = None
    values: tuple = ()
    cap: float | None = None
    scale: float | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], field: str = "features") -> FeatureSpec:
        """Validate one manifest entry; raise :class:`ModelError` naming ``field``."""
        if not isinstance(spec, Mapping):
            raise ModelError("a feature must be an object with name and kind", field)
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            # A misspelt "defualt" would otherwise be silently ignored.
            raise ModelError(f"unknown keys {unknown}; use {sorted(_SPEC_KEYS)}", field)
        name, kind = spec.get("name"), spec.get("kind", "numeric")
        if not isinstance(name, str) or not name:
            raise ModelError("feature name must be a fact name", f"{field}.name")
        if kind not in KINDS:
            raise ModelError(f"feature kind {kind!r} is not one of {KINDS}", f"{field}.kind")
        values = spec.get("values", ())
        if kind == "onehot" and (not isinstance(values, (list, tuple)) or not values):
            raise ModelError("onehot feature needs a non-empty values list", f"{field}.values")
        if not all(isinstance(v, (str, int, float)) for v in values):
            raise ModelError("onehot values must be strings or numbers", f"{field}.values")
        cap, scale = spec.get("cap"), spec.get("scale")
        for key, number in (("cap", cap), ("scale", scale)):
            if number is not None and not _is_number(number):
                raise ModelError(f"{key} must be a number", f"{field}.{key}")
        if scale is not None and scale <= 0:
            raise ModelError("scale must be positive", f"{field}.scale")
        default = spec.get("default")
        numeric_default = _is_number(default) or (kind == "bool" and isinstance(default, bool))
        if kind != "onehot" and default is not None and not numeric_default:
            raise ModelError(f"default of a {kind} feature must be a number", f"{field}.default")
        return cls(name, kind, default, tuple(values), cap, scale)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.default is not None:
            out["default"] = self.default
        if self.values:
            out["values"] = list(self.values)
        if self.cap is not None:
            out["cap"] = self.cap
        if self.scale is not None:
            out["scale"] = self.scale
        return out

    @property
    def columns(self) -> list[str]:
        if self.kind == "onehot":
            return [f"{self.name}={v}" for v in self.values]
        return [self.name]

    @property
    def per_candidate(self) -> bool:
        head = self.name.split(".", 1)[0]
        return head in _CANDIDATE_HEADS or self.name == "consent.channel"


class FeatureBuilder:
    """Builds the float32 feature matrix for a decision's candidates.

    ``specs`` are manifest feature dicts (or :class:`FeatureSpec`); ``group_of``
    maps an offer id to its group and is needed only by ``group.*`` facts.
    """

    def __init__(
        self,
        specs: Sequence[Mapping[str, Any] | FeatureSpec],
        group_of: Callable[[str], str] | None = None,
    ) -> None:
        if not specs:
            raise ModelError("a model needs at least one feature", "features")
        self.specs: tuple[FeatureSpec, ...] = tuple(
            s if isinstance(s, FeatureSpec) else FeatureSpec.from_dict(s, f"features[{i}]")
            for i, s in enumerate(specs)
        )
        self.columns: tuple[str, ...] = tuple(c for s in self.specs for c in s.columns)
        if len(set(self.columns)) != len(self.columns):
            raise ModelError("feature columns must be unique", "features")
        self._profile_cols: list[tuple[Getter, Writer]] = []
        self._candidate_cols: list[tuple[BatchGetter, Writer]] = []
        col = 0
        for i, spec in enumerate(self.specs):
            try:
                getter = compile_fact(spec.name, group_of)
            except UnknownFact as exc:
                raise ModelError(str(exc), f"features[{i}].name") from None
            if spec.per_candidate:
                batch = _batch_getter(spec.name, getter, group_of)
                self._candidate_cols.append((batch, _writer(spec, col)))
            else:
                self._profile_cols.append((getter, _writer(spec, col)))
            col += len(spec.columns)
        self._blank = array("f", [0.0] * col)

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def to_manifest(self) -> list[dict[str, Any]]:
        """The feature list as stored in ``manifest.json``."""
        return [s.to_dict() for s in self.specs]

    def build(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray:
        """float32 ``[len(candidates), n_columns]``; one row per candidate, in order."""
        # One flat float32 buffer, filled in place and wrapped without a copy:
        # converting nested Python lists costs more than all the facts together.
        row = self._blank[:]
        for getter, write in self._profile_cols:
            write(row, 0, (getter(profile, context, None, now),))
        width = len(row)
        buf = row * len(candidates)
        for batch, write in self._candidate_cols:
            write(buf, width, batch(profile, context, candidates, now))
        return np.frombuffer(buf, dtype=np.float32).reshape(len(candidates), width)

    def rows_for_training(
        self, decisions: Iterable[tuple[Profile, dict, Sequence[Candidate], float]]
    ) -> np.ndarray:
        """Stack :meth:`build` over ``(profile, context, candidates, now)`` tuples.

        The profile must be in the state it had at decision time: the point is
        that training rows come from exactly the serving code path.
        """
        blocks = [self.build(p, ctx, cands, now) for p, ctx, cands, now in decisions]
        if not blocks:
            return np.zeros((0, self.n_columns), dtype=np.float32)
        return np.concatenate(blocks, axis=0)


# -- encodings -------------------------------------------------------------------
#
# A writer puts encoded values into a flat float32 buffer: ``values[i]`` goes to
# ``col + i * width``. Profile-level facts are written as a column of one value.
# The loops are written out per kind because a function call per cell costs
# more than the encoding itself.

_NUMBER_TYPES = (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _as_number(v: Any, default: float) -> float:
    """The slow path for what is not a plain finite int/float (bool, numpy, NaN, str)."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    return float(v) if _is_number(v) else default


def _writer(spec: FeatureSpec, col: int) -> Writer:
    kind = spec.kind
    if kind == "onehot":
        return _onehot_writer(spec, col)
    dflt = float(spec.default or 0.0)
    if kind == "bool":

        def put_bool(buf: array, width: int, values: Sequence) -> None:
            pos = col
            for v in values:
                buf[pos] = dflt if v is None else (1.0 if v else 0.0)
                pos += width

        return put_bool
    if kind == "since":
        scale = float(spec.scale or DEFAULT_SINCE_SCALE_S)

        # Recency rather than raw seconds: bounded, and "never" sits next to
        # "long ago" (0.0) instead of needing a made-up huge number.
        def put_since(buf: array, width: int, values: Sequence) -> None:
            pos = col
            for v in values:
                if type(v) in _NUMBER_TYPES and v == v:
                    buf[pos] = math.exp(-v / scale) if v > 0 else 1.0
                else:
                    buf[pos] = math.exp(-max(v, 0.0) / scale) if _is_number(v) else dflt
                pos += width

        return put_since
    cap = math.inf if spec.cap is None else float(spec.cap)
    if kind == "log1p":

        def put_log1p(buf: array, width: int, values: Sequence) -> None:
            pos = col
            for v in values:
                x = v if type(v) in _NUMBER_TYPES and v == v else _as_number(v, dflt)
                buf[pos] = math.log1p(0.0 if x < 0.0 else (x if x < cap else cap))
                pos += width

        return put_log1p

    def put_numeric(buf: array, width: int, values: Sequence) -> None:
        pos = col
        for v in values:
            x = v if type(v) in _NUMBER_TYPES and v == v else _as_number(v, dflt)
            buf[pos] = x if x < cap else cap
            pos += width

    return put_numeric


def _onehot_writer(spec: FeatureSpec, col: int) -> Writer:
    # Keys are compared as strings so that 3 and "3" (JSON, YAML) are one value.
    index = {str(v): i for i, v in enumerate(spec.values)}
    dflt = spec.default

    def put_onehot(buf: array, width: int, values: Sequence) -> None:
        pos = col
        for v in values:
            if type(v) is not str:
                if v is None:
                    v = dflt
                if isinstance(v, (list, tuple, set, frozenset)):
                    # A list value (holdings, tags) sets one column per element.
                    for j in {index[k] for k in map(str, v) if k in index}:
                        buf[pos + j] = 1.0
                    pos += width
                    continue
                v = str(v)
            j = index.get(v)
            if j is not None:
                buf[pos + j] = 1.0
            pos += width

    return put_onehot


# -- candidate-level facts, one call for all candidates ---------------------------

_OFFER_ATTRS = {
    "offer.id": "offer_id",
    "offer.group": "group",
    "offer.channel": "channel",
    "offer.placement": "placement",
    "offer.treatment": "treatment_id",
    "offer.value": "value",
    "offer.tags": "tags",
}


def _batch_getter(name: str, getter: Getter, group_of: Callable[[str], str] | None) -> BatchGetter:
    if name in _OFFER_ATTRS:
        field_of = attrgetter(_OFFER_ATTRS[name])
        return lambda p, ctx, cands, now: list(map(field_of, cands))
    parts = name.split(".")
    if len(parts) == 3 and parts[1] in ("impressions", "rejections", "accepts"):
        window = parse_duration(parts[2])
        if parts[0] == "offer":
            kind = {"impressions": IMPRESSION, "rejections": "rejected", "accepts": "accepted"}
            return _history_counts(kind[parts[1]], window, itemgetter(1), "offer_id")
        if parts[0] == "channel":
            return _history_counts(IMPRESSION, window, itemgetter(2), "channel")
        if parts[0] == "group" and group_of is not None:
            gof = group_of
            return _history_counts(IMPRESSION, window, lambda h: gof(h[1]), "group")
    if name == "offer.since_impression":
        return _history_since(IMPRESSION)
    if name == "offer.since_rejection":
        return _history_since("rejected")

    def each(p: Profile, ctx: dict, cands: Sequence[Candidate], now: float) -> list:
        return [getter(p, ctx, c, now) for c in cands]

    return each


def _history_counts(kind: str, window: float, key_of: Callable, attr: str) -> BatchGetter:
    cand_key = attrgetter(attr)

    def counts(p: Profile, ctx: dict, cands: Sequence[Candidate], now: float) -> list:
        cutoff = now - window
        seen: dict[Any, int] = {}
        for h in p.history:
            if h[0] >= cutoff and h[3] == kind:
                k = key_of(h)
                seen[k] = seen.get(k, 0) + 1
        return [seen.get(cand_key(c), 0) for c in cands]

    return counts


def _history_since(kind: str) -> BatchGetter:
    def since(p: Profile, ctx: dict, cands: Sequence[Candidate], now: float) -> list:
        last: dict[str, float] = {}
        for h in p.history:  # ordered by time, so the last write wins
            if h[3] == kind:
                last[h[1]] = h[0]
        out = []
        for c in cands:
            ts = last.get(c.offer_id)
            out.append(None if ts is None else now - ts)
        return out

    return since
