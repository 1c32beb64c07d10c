"""Off-policy estimators: IPS, self-normalised IPS and doubly robust.

A :class:`BanditLog` holds logged decisions, one row each: the action the
logging policy took, the reward that followed, the probability with which the
logging policy took it (μ), and the candidate (target) policy's probability
for each action it would take in that context (π). :func:`evaluate` estimates
the candidate policy's value — its expected reward per decision — three ways:

- **IPS** (inverse propensity scoring): mean of ``w·r`` with ``w = π(a|x)/μ``.
  Unbiased when μ > 0 wherever π > 0; high variance when weights are large.
- **SNIPS** (self-normalised IPS): ``Σ w·r / Σ w``. Slightly biased, much
  lower variance; bounded by the rewards' range.
- **DR** (doubly robust): ``mean(Σ_a π(a|x)·q̂(x,a) + w·(r − q̂(x,a_logged)))``.
  Unbiased if either the weights or the reward model q̂ are right; lower
  variance than IPS when q̂ is good.

The reward model q̂ is a **per (action, context stratum) mean**, shrunk
towards the action's mean (and that towards the global mean) with a prior
weight of :data:`SHRINKAGE` rows, and **cross-fitted**: rows are split into
``folds`` folds by index and each row's q̂ comes from the other folds only, so
a row's own reward never predicts itself. A stratum is a short string per row
(for RTIM history: the requested channels and placement; for the minimal
format: the row's ``stratum`` or its ``context`` as canonical JSON), so
continuous contexts fall back to the action mean.

Each estimate comes with a percentile bootstrap 95 % interval (rows resampled
with replacement ``bootstrap`` times; the reward model is not refitted per
resample) and the effective sample size of the weights,
``ESS = (Σw)² / Σw²`` — how many rows the estimate is really worth.

Warnings (codes in :data:`WARNINGS`) say when not to trust a number:

- ``missing_probability``: rows without a logged probability are skipped;
- ``zero_probability``: rows whose logged action has μ = 0 (impossible for a
  logged action: the log is inconsistent) are skipped;
- ``small_probability``: μ under ``min_probability`` (default 0.01) is
  clipped up to it, capping weights at ``1/min_probability`` (biased, but
  bounded variance);
- ``deterministic_logging``: every μ is 1, so only contexts where the
  candidate agrees with the logger carry information; estimates are biased
  when they disagree;
- ``low_ess``: the effective sample size is under ``min_ess`` (default 100);
- ``no_support``: the candidate never takes a logged action (all weights 0).

Pure numpy; no Ray.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
SHRINKAGE = 5.0  # prior weight (rows) of the reward model's shrinkage towards broader means
WARNINGS = ("missing_probability", "zero_probability", "small_probability",
            "deterministic_logging", "low_ess", "no_support")  # fmt: skip


@dataclass(frozen=True)
class EvaluationSettings:
    """Knobs of :func:`evaluate`, validated once."""

    bootstrap: int = 200
    seed: int = 0
    min_probability: float = 0.01
    min_ess: float = 100.0
    folds: int = 2
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0 <= self.bootstrap <= 100_000:
            raise ValueError("bootstrap must be from 0 to 100000")
        if not 0.0 < self.min_probability <= 1.0:
            raise ValueError("min_probability must be in (0, 1]")
        if self.min_ess < 0:
            raise ValueError("min_ess must be at least 0")
        if not 2 <= self.folds <= 20:
            raise ValueError("folds must be from 2 to 20")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError("confidence must be in [0.5, 1)")


class BanditLog:
    """Logged decisions, appended one row at a time in compact arrays.

    Actions and strata are interned strings; the candidate policy's
    distribution per row is kept sparse (only actions with π > 0).
    """

    def __init__(self) -> None:
        self.actions: dict[str, int] = {}
        self.strata: dict[str, int] = {}
        self._action = array("l")
        self._stratum = array("l")
        self._reward = array("d")
        self._mu = array("d")  # NaN: missing
        self._t_start = array("l", [0])
        self._t_action = array("l")
        self._t_prob = array("d")

    def __len__(self) -> int:
        return len(self._action)

    def add(
        self,
        action: str,
        reward: float,
        logged_probability: float | None,
        target: Mapping[str, float],
        stratum: str = "",
    ) -> None:
        """One logged decision; ``target`` maps actions to the candidate's probability."""
        self._action.append(self._intern(self.actions, action))
        self._stratum.append(self._intern(self.strata, stratum))
        self._reward.append(float(reward))
        mu = math.nan if logged_probability is None else float(logged_probability)
        self._mu.append(mu)
        for a, p in target.items():
            if p > 0.0:
                self._t_action.append(self._intern(self.actions, a))
                self._t_prob.append(float(p))
        self._t_start.append(len(self._t_action))

    @staticmethod
    def _intern(table: dict[str, int], key: str) -> int:
        i = table.get(key)
        if i is None:
            i = table[key] = len(table)
        return i

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "action": np.frombuffer(self._action, dtype=np.int_).copy(),
            "stratum": np.frombuffer(self._stratum, dtype=np.int_).copy(),
            "reward": np.frombuffer(self._reward, dtype=np.float64).copy(),
            "mu": np.frombuffer(self._mu, dtype=np.float64).copy(),
            "t_start": np.frombuffer(self._t_start, dtype=np.int_).copy(),
            "t_action": np.frombuffer(self._t_action, dtype=np.int_).copy(),
            "t_prob": np.frombuffer(self._t_prob, dtype=np.float64).copy(),
        }


@dataclass
class Estimate:
    """One estimator's answer."""

    estimator: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    ess: float
    n: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "estimate": _round(self.value),
            "ci_low": _round(self.ci_low),
            "ci_high": _round(self.ci_high),
            "ess": round(self.ess, 2),
            "n": self.n,
            "warnings": list(self.warnings),
        }


@dataclass
class Evaluation:
    """Every estimator's answer, with what was skipped and why."""

    estimates: list[Estimate]
    rows: int  # rows given
    used: int  # rows that entered the estimates
    skipped: dict[str, int]
    warnings: dict[str, str]  # code -> message
    logged_value: float | None  # mean reward of the used rows (the logging policy's value)
    confidence: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    def by_name(self, name: str) -> Estimate:
        return next(e for e in self.estimates if e.estimator == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "used": self.used,
            "skipped": dict(self.skipped),
            "logged_value": _round(self.logged_value),
            "confidence": self.confidence,
            "estimates": [e.to_dict() for e in self.estimates],
            "warnings": dict(self.warnings),
            **self.extra,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def evaluate(log: BanditLog, settings: EvaluationSettings | None = None) -> Evaluation:
    """Estimate the candidate policy's value on ``log`` (see the module docstring)."""
    s = settings or EvaluationSettings()
    d = log.arrays()
    n_all = len(d["reward"])
    warnings: dict[str, str] = {}
    skipped: dict[str, int] = {}
    mu = d["mu"]
    missing = np.isnan(mu)
    zero = ~missing & (mu <= 0.0)
    if missing.any():
        skipped["missing_probability"] = int(missing.sum())
        warnings["missing_probability"] = (
            f"{int(missing.sum())} row(s) have no logged probability and were skipped"
        )
    if zero.any():
        skipped["zero_probability"] = int(zero.sum())
        warnings["zero_probability"] = (
            f"{int(zero.sum())} row(s) log probability 0 for the action taken "
            "(an inconsistent log) and were skipped"
        )
    keep = ~(missing | zero)
    idx = np.flatnonzero(keep)
    n = len(idx)
    if n == 0:
        empty = [Estimate(name, None, None, None, 0.0, 0, ["no_rows"]) for name in ESTIMATORS]
        return Evaluation(empty, n_all, 0, skipped, warnings, None, s.confidence)
    mu = mu[idx]
    small = mu < s.min_probability
    if small.any():
        warnings["small_probability"] = (
            f"{int(small.sum())} row(s) have a logged probability under {s.min_probability:g}; "
            f"clipped to it (weights capped at {1 / s.min_probability:g}), which biases IPS and DR"
        )
        mu = np.maximum(mu, s.min_probability)
    if np.all(mu >= 1.0):
        warnings["deterministic_logging"] = (
            "every logged probability is 1 (a deterministic logging policy): only decisions "
            "where the candidate agrees with the log carry information, so the estimates are "
            "biased wherever it would have acted differently"
        )
    action, stratum, reward = d["action"][idx], d["stratum"][idx], d["reward"][idx]
    entries = _target_entries(d, idx)
    e_row, e_action, e_prob = entries
    pi_logged = np.bincount(e_row, e_prob * (e_action == action[e_row]), n)
    w = pi_logged / mu
    q_logged, q_target = _reward_model(action, stratum, reward, entries, s.folds)
    terms = {
        "ips": w * reward,
        "dr": q_target + w * (reward - q_logged),
    }
    sw, sw2 = float(w.sum()), float((w * w).sum())
    ess = sw * sw / sw2 if sw2 > 0 else 0.0
    common: list[str] = []
    if sw == 0.0:
        common.append("no_support")
        warnings["no_support"] = (
            "the candidate policy never takes a logged action: the log says nothing about it"
        )
    if ess < s.min_ess:
        common.append("low_ess")
        warnings["low_ess"] = (
            f"effective sample size {ess:.1f} is under {s.min_ess:g}: too few rows where the "
            "candidate agrees with the log for the estimates to be trusted"
        )
    for code in ("small_probability", "deterministic_logging"):
        if code in warnings:
            common.append(code)
    point = {
        "ips": float(terms["ips"].mean()),
        "snips": float((w * reward).sum() / sw) if sw > 0 else None,
        "dr": float(terms["dr"].mean()),
    }
    lo_hi = _bootstrap(w, reward, terms, n, s)
    estimates = []
    for name in ESTIMATORS:
        lo, hi = lo_hi.get(name, (None, None))
        if point[name] is None:
            lo = hi = None
        estimates.append(Estimate(name, point[name], lo, hi, ess, n, list(common)))
    return Evaluation(estimates, n_all, n, skipped, warnings, float(reward.mean()), s.confidence)


def _target_entries(
    d: dict[str, np.ndarray], idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept rows' sparse target entries: (kept row index, action, probability)."""
    start = d["t_start"]
    row_of = np.repeat(np.arange(len(start) - 1), np.diff(start))
    pos = np.full(len(start) - 1, -1)
    pos[idx] = np.arange(len(idx))
    j = pos[row_of]
    m = j >= 0
    return j[m], d["t_action"][m], d["t_prob"][m]


def _reward_model(
    action: np.ndarray,
    stratum: np.ndarray,
    reward: np.ndarray,
    entries: tuple[np.ndarray, np.ndarray, np.ndarray],
    folds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted q̂: for the logged action, and Σ_a π(a|x)·q̂(x,a), per row."""
    n = len(reward)
    e_row, e_action, e_prob = entries
    n_actions = max(int(e_action.max(initial=-1)), int(action.max(initial=-1))) + 1
    n_strata = int(stratum.max(initial=-1)) + 1
    fold = np.arange(n) % folds
    # Cells (action, stratum) seen in the log, as sorted keys; sums and counts
    # per fold, so "all but fold k" is the total minus fold k.
    key = action.astype(np.int64) * n_strata + stratum
    cells, cell_of = np.unique(key, return_inverse=True)
    cell_sum = np.zeros((folds, len(cells)))
    cell_cnt = np.zeros((folds, len(cells)))
    act_sum = np.zeros((folds, n_actions))
    act_cnt = np.zeros((folds, n_actions))
    for k in range(folds):
        m = fold == k
        cell_sum[k] = np.bincount(cell_of[m], reward[m], len(cells))
        cell_cnt[k] = np.bincount(cell_of[m], minlength=len(cells))
        act_sum[k] = np.bincount(action[m], reward[m], n_actions)
        act_cnt[k] = np.bincount(action[m], minlength=n_actions)

    def q(k: np.ndarray, a: np.ndarray, s: np.ndarray) -> np.ndarray:
        """q̂ from the folds other than ``k``, for actions ``a`` in strata ``s``."""
        as_ = act_sum.sum(0)[None, :] - act_sum
        ac = act_cnt.sum(0)[None, :] - act_cnt
        total = ac.sum(1)
        g = np.where(total > 0, as_.sum(1) / np.maximum(total, 1), reward.mean())
        a_mean = (as_[k, a] + SHRINKAGE * g[k]) / (ac[k, a] + SHRINKAGE)
        want = a.astype(np.int64) * n_strata + s
        at = np.minimum(np.searchsorted(cells, want), len(cells) - 1)
        found = cells[at] == want
        cs = np.where(found, cell_sum.sum(0)[at] - cell_sum[k, at], 0.0)
        cc = np.where(found, cell_cnt.sum(0)[at] - cell_cnt[k, at], 0.0)
        return (cs + SHRINKAGE * a_mean) / (cc + SHRINKAGE)

    q_logged = q(fold, action, stratum)
    q_each = q(fold[e_row], e_action, stratum[e_row])
    q_target = np.bincount(e_row, e_prob * q_each, n)
    return q_logged, q_target


def _bootstrap(
    w: np.ndarray,
    reward: np.ndarray,
    terms: dict[str, np.ndarray],
    n: int,
    s: EvaluationSettings,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals from ``s.bootstrap`` resamples of the rows."""
    if s.bootstrap < 2 or n < 2:
        return {}
    rng = np.random.default_rng(s.seed)
    wr = w * reward
    out = {name: np.empty(s.bootstrap) for name in ESTIMATORS}
    for b in range(s.bootstrap):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        out["ips"][b] = counts @ terms["ips"] / n
        out["dr"][b] = counts @ terms["dr"] / n
        sw = counts @ w
        out["snips"][b] = counts @ wr / sw if sw > 0 else np.nan
    tail = (1.0 - s.confidence) / 2 * 100
    result = {}
    for name, values in out.items():
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = np.percentile(values, [tail, 100 - tail])
            result[name] = (float(lo), float(hi))
    return result
