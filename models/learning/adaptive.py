"""Adaptive propensity models: online Bayesian learners that add up across shards.

One model per (offer, channel) — the key ``offer@channel``. A channel changes
both who responds and what a contact costs, and a naive-Bayes model cannot
learn channel × customer interactions from a "channel" predictor, so each
channel of an offer learns on its own.

A model is a table of counts (its *evidence*): responses and positives in
total and per (predictor, bin). Counts add, so shards merge by summing their
evidence — exactly and in any order (:meth:`Evidence.merge`).

Estimate for a customer (naive Bayes in log-odds, like Pega's adaptive models)::

    base     = (positives + 1) / (responses + 2)
    q_j      = (pos_jb + m·base) / (n_jb + m)          per predictor j, bin b
    logit(μ) = logit(base) + Σ_j (logit(q_j) − logit(base))

and the evidence behind it, ``n = min(responses, min_j n_jb)`` (a rarely seen
bin keeps the estimate uncertain). The prior — the ONNX model's propensity, a
fixed offer propensity, or the catalogue's ``starting_propensity`` — weighs as
``prior_weight`` responses; the posterior is approximated by::

    Beta(w·π + n·μ,  w·(1 − π) + n·(1 − μ))

so with no evidence the prior decides, and the learned estimate takes over as
``n`` grows past ``w`` (at ``n = w`` they weigh the same). Thompson sampling
draws from this Beta; :func:`choice_probabilities` estimates with which
probability the policy picks each candidate by repeating the draw ``M``
times (``learning.draws``, default 100; the decision's own draw is one of
them, so a chosen candidate never gets 0). Each estimate is unbiased with a
standard error ≤ ``0.5/√(M+1)`` (≤ 0.05 at the default); averaged over many
decisions, as off-policy evaluation does, the error shrinks further.

A predictor is a fact name (:mod:`models.decisioning.facts`). Numbers fall into
bins (``edges``, or :data:`DEFAULT_EDGES`), other values are their own bin (at
most :data:`MAX_BINS` per predictor, then ``"other"``), and an unset fact is
the bin ``"missing"``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.decisioning.facts import Getter, UnknownFact, compile_fact, parse_duration
from models.errors import CatalogError

MISSING = "missing"
OTHER = "other"
MAX_BINS = 64  # distinct categorical bins per predictor and model; memory stays bounded
DEFAULT_EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 365.0, 1000.0, 1e4, 1e5)
ESTIMATE_CACHE = 4096  # (model, bins) estimates kept between two changes of the evidence
AUC_BUCKETS = 50  # resolution of the prequential AUC histograms
SMOOTHING = 2.0  # m: pseudo-responses that pull a bin's rate towards the base rate
DEFAULT_POSITIVE = ("accepted", "clicked")
DEFAULT_NEGATIVE = ("rejected", "ignored")


def _fail(field: str, message: str) -> CatalogError:
    return CatalogError(f"{field}: {message}", field)


# -- predictors ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Predictor:
    """A fact, and how its values fall into bins."""

    name: str
    edges: tuple[float, ...] | None  # None: numbers use DEFAULT_EDGES
    getter: Getter
    cross: bool = False  # several facts, one bin per combination of their bins
    per_candidate: bool = False  # reads the candidate offer (else: once per decision)

    @classmethod
    def from_spec(
        cls, spec: Any, field: str, group_of: Callable[[str], str | None] | None = None
    ) -> Predictor:
        """``"attr.segment"``, ``{fact: tenure_days, bins: [30, 180]}`` or ``{cross: [a, b]}``."""
        edges = None
        if isinstance(spec, dict) and "cross" in spec:
            facts = spec["cross"]
            if set(spec) != {"cross"} or not isinstance(facts, list) or len(facts) < 2:
                raise _fail(field, "a cross predictor is {cross: [two or more fact names]}")
            parts = [cls.from_spec(f, f"{field}.cross[{i}]", group_of) for i, f in enumerate(facts)]
            getters = [p.getter for p in parts]

            def joint(p: Any, c: dict, o: Any, n: float) -> tuple:
                return tuple(g(p, c, o, n) for g in getters)

            name = " × ".join(p.name for p in parts)
            return cls(name, None, joint, True, any(p.per_candidate for p in parts))
        if isinstance(spec, dict):
            extra = set(spec) - {"fact", "bins"}
            if extra:
                raise _fail(field, f"unknown keys {sorted(extra)}; a predictor has fact, bins")
            bins = spec.get("bins")
            if bins is not None:
                ok = (
                    isinstance(bins, list)
                    and bins
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bins)
                )
                if not ok or list(bins) != sorted(set(bins)):
                    raise _fail(f"{field}.bins", "bins must be a non-empty increasing number list")
                edges = tuple(float(b) for b in bins)
            spec = spec.get("fact")
        if not isinstance(spec, str) or not spec:
            raise _fail(field, "a predictor is a fact name or {fact, bins}")
        try:
            getter = compile_fact(spec, group_of)  # type: ignore[arg-type]
        except UnknownFact as exc:
            raise _fail(
                field, f"predictor {spec!r} is not a fact the server can compute ({exc})"
            ) from None
        reads_offer = spec.split(".")[0] in ("offer", "group", "channel")
        return cls(spec, edges, getter, False, reads_offer or spec == "consent.channel")

    def bin(self, value: Any) -> str:
        """The bin of a fact value; ``"missing"`` when unset, never an error."""
        if self.cross:
            return "|".join(self.bin_one(v) for v in value)
        return self.bin_one(value)

    def bin_one(self, value: Any) -> str:
        if value is None:
            return MISSING
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            if value != value:  # NaN
                return MISSING
            edges = self.edges or DEFAULT_EDGES
            i = bisect_right(edges, value)
            if i == 0:
                return f"<{edges[0]:g}"
            return f">={edges[i - 1]:g}"
        if isinstance(value, (list, tuple, set, frozenset)):
            return "|".join(sorted(str(v) for v in value))[:64] or "empty"
        return str(value)[:64]


# -- catalogue configuration ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LearningConfig:
    """The catalogue's ``learning`` section, validated."""

    predictors: dict[str, tuple[Predictor, ...]]  # adaptive offer id -> its predictors
    positive: frozenset[str]
    negative: frozenset[str]
    prior_weight: float  # responses the prior weighs as
    starting_propensity: float | None  # instead of the model's propensity, when set
    exploration: str  # "thompson" or "greedy" (posterior mean, no exploration)
    draws: int  # Monte Carlo draws for choice probabilities
    ranking: str  # "propensity": P × C × V × L; "incremental": (P − P(no message)) × C × V × L
    baseline: tuple[Predictor, ...]  # predictors of the no-message models (learning.predictors)
    goal: str | None  # an event type that counts as a positive outcome of the last decision
    goal_window_s: float  # ... when it comes this soon after the decision
    negative_after_s: float | None  # no outcome this long after a decision: a negative
    spec: dict  # as written, for to_dict()
    offer_specs: dict[str, Any]  # each offer's ``adaptive`` key as written
    # Per adaptive offer its predictors' names (the hot path reads them per candidate).
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    baseline_names: tuple[str, ...] = ()

    def is_adaptive(self, offer_id: str) -> bool:
        return offer_id in self.predictors

    def label(self, outcome: str) -> bool | None:
        """True for a positive outcome, False for a negative one, None to ignore."""
        if outcome in self.positive:
            return True
        if outcome in self.negative:
            return False
        return None

    def to_dict(self) -> dict:
        return dict(self.spec)


LEARNING_KEYS = frozenset(
    {"offers", "predictors", "positive", "negative", "prior_weight", "starting_propensity",
     "exploration", "draws", "ranking", "goal", "goal_window", "negative_after"}
)  # fmt: skip
NO_MESSAGE = "none"  # the offer id of the no-message models: none@<channel>
BASELINE_PROPENSITY = 0.05  # prior of a no-message model without starting_propensity
OUTCOMES = frozenset(DEFAULT_POSITIVE + DEFAULT_NEGATIVE)


def load_learning(
    raw: Any,
    offer_specs: Mapping[str, dict],
    group_of: Callable[[str], str | None] | None = None,
) -> LearningConfig | None:
    """Validate the ``learning`` section and each offer's ``adaptive`` key.

    An offer is adaptive when ``learning.offers`` is ``all`` or lists it, or
    when it says ``adaptive: true`` or ``adaptive: {predictors: [...]}`` (its
    own predictors instead of ``learning.predictors``).
    """
    if raw is None:
        if any(s.get("adaptive") for s in offer_specs.values()):
            first = next(k for k, s in offer_specs.items() if s.get("adaptive"))
            raise _fail(f"offers[{first}].adaptive", "adaptive offers need a learning section")
        return None
    if not isinstance(raw, dict):
        raise _fail("learning", "learning must be a mapping")
    extra = set(raw) - LEARNING_KEYS
    if extra:
        raise _fail("learning", f"unknown keys {sorted(extra)}; allowed: {sorted(LEARNING_KEYS)}")
    default_specs = raw.get("predictors", [])
    if not isinstance(default_specs, list):
        raise _fail("learning.predictors", "must be a list of fact names")
    listed = raw.get("offers", [])
    if listed != "all" and not (
        isinstance(listed, list) and all(isinstance(o, str) for o in listed)
    ):
        raise _fail("learning.offers", "must be 'all' or a list of offer ids")
    for oid in listed if isinstance(listed, list) else ():
        if oid not in offer_specs:
            raise _fail("learning.offers", f"unknown offer {oid!r}")
    predictors: dict[str, tuple[Predictor, ...]] = {}
    shared: tuple[Predictor, ...] | None = None  # learning.predictors, parsed once
    for oid, spec in offer_specs.items():
        own = spec.get("adaptive")
        field = f"offers[{oid}].adaptive"
        if own is False:
            continue
        if own is None and not (listed == "all" or oid in listed):
            continue
        specs, where = default_specs, "learning.predictors"
        if isinstance(own, dict):
            if set(own) - {"predictors"}:
                raise _fail(field, "adaptive is true, false or {predictors: [...]}")
            specs, where = own.get("predictors", default_specs), f"{field}.predictors"
            if not isinstance(specs, list):
                raise _fail(where, "must be a list of fact names")
        elif own is not None and own is not True:
            raise _fail(field, "adaptive is true, false or {predictors: [...]}")
        if specs is default_specs and shared is not None:
            predictors[oid] = shared  # one tuple: the hot path bins it once per decision
            continue
        preds = []
        for i, p in enumerate(specs):
            try:
                preds.append(Predictor.from_spec(p, f"{where}[{i}]", group_of))
            except CatalogError as exc:
                # Name the offer as well: the same predictor list serves many offers.
                raise _fail(
                    f"offers[{oid}].{exc.field}" if where == "learning.predictors" else exc.field,
                    f"offer {oid!r}: {exc.message.split(': ', 1)[-1]}",
                ) from None
        predictors[oid] = tuple(preds)
        if specs is default_specs:
            shared = predictors[oid]
    positive = _outcomes(raw.get("positive", list(DEFAULT_POSITIVE)), "learning.positive")
    negative = _outcomes(raw.get("negative", list(DEFAULT_NEGATIVE)), "learning.negative")
    if positive & negative:
        raise _fail("learning.negative", f"{sorted(positive & negative)} is also positive")
    prior_weight = raw.get("prior_weight", 20)
    if (
        isinstance(prior_weight, bool)
        or not isinstance(prior_weight, (int, float))
        or not (0 < prior_weight <= 1e6)
    ):
        raise _fail("learning.prior_weight", "must be a number in (0, 1e6]")
    start = raw.get("starting_propensity")
    if start is not None and (
        isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 < start < 1
    ):
        raise _fail("learning.starting_propensity", "must be a number in (0, 1)")
    exploration = raw.get("exploration", "thompson")
    if exploration not in ("thompson", "greedy"):
        raise _fail("learning.exploration", "must be thompson or greedy")
    draws = raw.get("draws", 100)
    if isinstance(draws, bool) or not isinstance(draws, int) or not 10 <= draws <= 10000:
        raise _fail("learning.draws", "must be an integer in [10, 10000]")
    ranking = raw.get("ranking", "propensity")
    if ranking not in ("propensity", "incremental"):
        raise _fail("learning.ranking", "must be propensity or incremental")
    baseline = tuple(
        Predictor.from_spec(p, f"learning.predictors[{i}]", group_of)
        for i, p in enumerate(default_specs)
    )
    if ranking == "incremental":
        for i, p in enumerate(baseline):
            if p.name.split(".")[0] in ("offer", "group", "channel") or p.name == "consent.channel":
                raise _fail(
                    f"learning.predictors[{i}]",
                    f"{p.name!r} describes an offer; the no-message models cannot use it",
                )
    goal = raw.get("goal")
    if goal is not None and (not isinstance(goal, str) or not goal or goal == "response"):
        raise _fail("learning.goal", "must be an event type other than response, e.g. purchase")
    try:
        window = parse_duration(raw.get("goal_window", "7d"))
    except ValueError as exc:
        raise _fail("learning.goal_window", str(exc)) from None
    negative_after = None
    if raw.get("negative_after") is not None:
        try:
            negative_after = parse_duration(raw["negative_after"])
        except ValueError as exc:
            raise _fail("learning.negative_after", str(exc)) from None
        if negative_after <= 0:
            raise _fail("learning.negative_after", "must be a positive duration such as 1h")
    return LearningConfig(
        predictors, positive, negative, float(prior_weight),
        None if start is None else float(start), exploration, draws, ranking, baseline, goal,
        window, negative_after, dict(raw),
        {k: s["adaptive"] for k, s in offer_specs.items() if "adaptive" in s},
        {k: tuple(p.name for p in preds) for k, preds in predictors.items()},
        tuple(p.name for p in baseline),
    )  # fmt: skip


def _outcomes(raw: Any, field: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise _fail(field, f"must be a list of outcomes from {sorted(OUTCOMES)}")
    bad = [o for o in raw if o not in OUTCOMES]
    if bad:
        raise _fail(field, f"unknown outcome {bad[0]!r}; outcomes are {sorted(OUTCOMES)}")
    return frozenset(raw)


# -- evidence -------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Evidence:
    """Sufficient statistics of one model: counts that add up across shards."""

    __slots__ = ("auc_neg", "auc_pos", "bins", "n", "pos")

    def __init__(self) -> None:
        self.n = 0.0
        self.pos = 0.0
        self.bins: dict[str, dict[str, list[float]]] = {}  # predictor -> bin -> [n, pos]
        # Prequential AUC: the estimate each response got *before* it was learned.
        self.auc_pos = [0.0] * AUC_BUCKETS
        self.auc_neg = [0.0] * AUC_BUCKETS

    def learn_one(
        self, names: Sequence[str], bins: Sequence[str], positive: bool, before: float | None = None
    ) -> None:
        """Count one response whose predictor values fell into ``bins``.

        ``before`` is the estimate the response got before it was learned (for
        the prequential AUC); default: this evidence's own estimate.
        """
        if before is None:
            before = self.estimate(names, bins)[0]
        hist = self.auc_pos if positive else self.auc_neg
        hist[min(AUC_BUCKETS - 1, int(before * AUC_BUCKETS))] += 1.0
        y = 1.0 if positive else 0.0
        self.n += 1.0
        self.pos += y
        for name, b in zip(names, bins):
            table = self.bins.get(name)
            if table is None:
                table = self.bins[name] = {}
            cell = table.get(b)
            if cell is None:
                if len(table) >= MAX_BINS:
                    b = OTHER
                    cell = table.get(b)
                if cell is None:
                    cell = table[b] = [0.0, 0.0]
            cell[0] += 1.0
            cell[1] += y

    def estimate(self, names: Sequence[str], bins: Sequence[str]) -> tuple[float, float]:
        """``(learned propensity, evidence behind it in responses)``."""
        base = (self.pos + 1.0) / (self.n + 2.0)
        m_base = SMOOTHING * base
        lo_base = math.log(base / (1.0 - base))
        lo = lo_base
        n_eff = self.n
        log = math.log
        tables = self.bins
        for name, b in zip(names, bins):
            table = tables.get(name)
            cell = None
            if table is not None:
                cell = table.get(b)
                if cell is None and b != MISSING:
                    cell = table.get(OTHER)
            if cell is None:
                n_eff = 0.0
                continue
            n = cell[0]
            q = (cell[1] + m_base) / (n + SMOOTHING)
            lo += log(q / (1.0 - q)) - lo_base
            if n < n_eff:
                n_eff = n
        lo = -30.0 if lo < -30.0 else 30.0 if lo > 30.0 else lo
        return 1.0 / (1.0 + math.exp(-lo)), n_eff

    def merge(self, other: Evidence) -> None:
        """Add another shard's evidence (exact, order-free)."""
        self.n += other.n
        self.pos += other.pos
        for name, table in other.bins.items():
            mine = self.bins.setdefault(name, {})
            for b, (n, pos) in table.items():
                cell = mine.get(b)
                if cell is None:
                    if len(mine) >= MAX_BINS and b != OTHER:
                        cell = mine.setdefault(OTHER, [0.0, 0.0])
                    else:
                        cell = mine[b] = [0.0, 0.0]
                cell[0] += n
                cell[1] += pos
        for i in range(AUC_BUCKETS):
            self.auc_pos[i] += other.auc_pos[i]
            self.auc_neg[i] += other.auc_neg[i]

    def copy(self) -> Evidence:
        out = Evidence()
        out.merge(self)
        return out

    def auc(self) -> float | None:
        """Prequential ROC AUC from the histograms (ties count half); None without both labels."""
        npos, nneg = sum(self.auc_pos), sum(self.auc_neg)
        if not npos or not nneg:
            return None
        below = 0.0
        total = 0.0
        for p, n in zip(self.auc_pos, self.auc_neg):
            total += p * (below + 0.5 * n)
            below += n
        return total / (npos * nneg)

    def top_predictors(self, limit: int = 5) -> list[dict[str, Any]]:
        """Predictors by how far their bins' rates spread (evidence-weighted |log-odds|)."""
        if not self.n:
            return []
        base = (self.pos + 1.0) / (self.n + 2.0)
        lo_base = _logit(base)
        out = []
        for name, table in self.bins.items():
            spread = 0.0
            for n, pos in table.values():
                q = (pos + SMOOTHING * base) / (n + SMOOTHING)
                spread += n * abs(_logit(q) - lo_base)
            out.append(
                {"predictor": name, "strength": round(spread / self.n, 4), "bins": len(table)}
            )
        out.sort(key=lambda d: -d["strength"])
        return out[:limit]

    def to_builtins(self) -> dict[str, Any]:
        return {
            "n": self.n, "pos": self.pos, "bins": {k: dict(v) for k, v in self.bins.items()},
            "auc_pos": list(self.auc_pos), "auc_neg": list(self.auc_neg),
        }  # fmt: skip

    @classmethod
    def from_builtins(cls, data: Mapping[str, Any]) -> Evidence:
        out = cls()
        out.n, out.pos = float(data["n"]), float(data["pos"])
        out.bins = {
            k: {b: [float(c[0]), float(c[1])] for b, c in v.items()}
            for k, v in data["bins"].items()
        }
        out.auc_pos = [float(x) for x in data["auc_pos"]]
        out.auc_neg = [float(x) for x in data["auc_neg"]]
        return out


# -- the learner ----------------------------------------------------------------------


class Learner(Protocol):
    """What a learner honours (River-style): predict, learn one, export and merge."""

    def posterior(
        self, key: str, names: Sequence[str], bins: Sequence[str], prior: float
    ) -> tuple[float, float, float]: ...  # (a, b, learned)

    def learn_one(self, key: str, names: Sequence[str], bins: Sequence[str], y: bool) -> bool: ...

    def export(self) -> dict[str, dict]: ...

    def merge_others(self, evidence: Sequence[Mapping[str, dict]]) -> None: ...


def model_key(offer_id: str, channel: str) -> str:
    return f"{offer_id}@{channel}"


class AdaptiveModels:
    """A shard's adaptive models: its own evidence plus what the other shards learned.

    ``local`` holds this shard's evidence (cumulative; journalled). ``others``
    is the sum of the other shards' local evidence, replaced wholesale on each
    merge, so a repeated or lost merge round cannot count anything twice.
    Decisions read ``local + others``.
    """

    def __init__(self, prior_weight: float = 20.0, seed: int | None = None) -> None:
        self.prior_weight = prior_weight
        self.rng = np.random.default_rng(seed)  # Thompson draws
        self.local: dict[str, Evidence] = {}
        self.others: dict[str, Evidence] = {}
        self.merged: dict[str, Evidence] = {}
        self.frozen: set[str] = set()
        self.merged_at = 0.0  # when others was last replaced
        # (model, bins) -> (learned, evidence) of the merged evidence as it is now;
        # emptied whenever evidence changes, so it never serves a stale estimate.
        self.estimates: dict[tuple[str, tuple[str, ...]], tuple[float, float]] = {}

    # -- predict ---------------------------------------------------------------------

    def posterior(
        self, key: str, names: Sequence[str], bins: Sequence[str], prior: float
    ) -> tuple[float, float, float]:
        """Beta ``(a, b)`` of a candidate's propensity, and the learned estimate alone."""
        w = self.prior_weight
        prior = 1e-4 if prior < 1e-4 else 1.0 - 1e-4 if prior > 1.0 - 1e-4 else prior
        memo = (key, bins if isinstance(bins, tuple) else tuple(bins))
        known = self.estimates.get(memo)
        if known is None:
            ev = self.merged.get(key)
            if ev is None or not ev.n:
                return w * prior, w * (1.0 - prior), prior
            if len(self.estimates) >= ESTIMATE_CACHE:
                self.estimates.clear()
            known = self.estimates[memo] = ev.estimate(names, bins)
        mu, n = known
        return w * prior + n * mu, w * (1.0 - prior) + n * (1.0 - mu), mu

    # -- learn -----------------------------------------------------------------------

    def learn_one(self, key: str, names: Sequence[str], bins: Sequence[str], y: bool) -> bool:
        """Learn one response; False when the model is frozen."""
        if key in self.frozen:
            return False
        merged = self.merged.get(key)
        before = merged.estimate(names, bins)[0] if merged is not None else None
        self.estimates.clear()
        for table in (self.local, self.merged):
            ev = table.get(key)
            if ev is None:
                ev = table[key] = Evidence()
            ev.learn_one(names, bins, y, before)
        return True

    # -- export and merge --------------------------------------------------------------

    def export(self) -> dict[str, dict]:
        """This shard's local evidence, for the other shards."""
        return {k: ev.to_builtins() for k, ev in self.local.items()}

    def merge_others(self, evidence: Sequence[Mapping[str, dict]]) -> None:
        """Replace what the other shards learned with the sum of their exports."""
        others: dict[str, Evidence] = {}
        for export in evidence:
            for key, data in export.items():
                ev = Evidence.from_builtins(data)
                if key in others:
                    others[key].merge(ev)
                else:
                    others[key] = ev
        self.others = others
        self._remerge()

    def _remerge(self) -> None:
        self.estimates.clear()
        merged: dict[str, Evidence] = {}
        for table in (self.local, self.others):
            for key, ev in table.items():
                if key in merged:
                    merged[key].merge(ev)
                else:
                    merged[key] = ev.copy()
        self.merged = merged

    # -- operations ---------------------------------------------------------------------

    def reset(self, key: str | None = None) -> None:
        """Forget the evidence of one model (or all): it starts again from its prior."""
        self.estimates.clear()
        for table in (self.local, self.others, self.merged):
            if key is None:
                table.clear()
            else:
                table.pop(key, None)

    def freeze(self, key: str, frozen: bool) -> None:
        if frozen:
            self.frozen.add(key)
        else:
            self.frozen.discard(key)

    def load(self, state: Mapping[str, Any]) -> None:
        self.local = {k: Evidence.from_builtins(v) for k, v in state.get("local", {}).items()}
        self.frozen = set(state.get("frozen", ()))
        self._remerge()

    def state(self) -> dict[str, Any]:
        return {"local": self.export(), "frozen": sorted(self.frozen)}

    def summary(self, key: str) -> dict[str, Any]:
        """What ``GET /v1/models/adaptive/{key}`` shows for one model."""
        ev = self.merged.get(key) or Evidence()
        auc = ev.auc()
        return {
            "model": key,
            "responses": int(ev.n),
            "positives": int(ev.pos),
            "success_rate": round(ev.pos / ev.n, 6) if ev.n else None,
            "auc": None if auc is None else round(auc, 4),
            "maturity": round(ev.n / (ev.n + self.prior_weight), 4),
            "frozen": key in self.frozen,
            "top_predictors": ev.top_predictors(),
        }


# -- choosing, and with which probability ---------------------------------------------


def choice_probabilities(
    net: np.ndarray,
    offers: Sequence[str],
    groups: Sequence[str],
    min_priority: float,
    limit: int,
) -> tuple[np.ndarray, float]:
    """Estimate how often the greedy selection picks each column, over draws.

    ``net`` is ``[M, n]``: M independent Thompson draws of every candidate's
    net value (fixed candidates repeat their value). Returns per column the
    fraction of draws in which it was chosen, and the fraction in which
    nothing was (no action). Each is a mean of M Bernoulli outcomes, so its
    standard error is at most ``0.5/√M``. With ``limit`` 1 this is exactly the
    policy's selection; above 1 contact caps counting the decision's own picks
    are not replayed (they rarely bind within one decision).
    """
    m, n = net.shape
    if n == 0:
        return np.zeros(0), 1.0
    if limit == 1:
        best = net.argmax(axis=1)
        ok = net[np.arange(m), best] >= min_priority
        chosen = int(np.count_nonzero(ok))
        if chosen == m:
            return np.bincount(best, minlength=n) / m, 0.0
        return np.bincount(best, weights=ok, minlength=n) / m, 1.0 - chosen / m
    counts = np.zeros(n)
    empty = 0
    order = np.argsort(-net, axis=1, kind="stable")
    for r in range(m):
        taken_offers: set[str] = set()
        taken_groups: set[str] = set()
        picked = 0
        for j in order[r]:
            if net[r, j] < min_priority or picked >= limit:
                break
            if offers[j] in taken_offers or groups[j] in taken_groups:
                continue
            counts[j] += 1
            taken_offers.add(offers[j])
            taken_groups.add(groups[j])
            picked += 1
        empty += picked == 0
    return counts / m, empty / m
