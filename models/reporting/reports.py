"""The bodies of ``GET /v1/reports/*``, computed from merged :class:`ReportCounters`.

Pure functions of the counters (and, for models, of the adaptive models'
summaries), so they are unit-tested without a server. Lift is *relative*:
``arm / control - 1`` of the success rate and of the value per decision, with
a 95 % confidence interval from the delta method (see :func:`relative_lift`
and docs/reports.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.errors import ValidationError
from models.reporting.counters import (
    A_DECISIONS,
    A_POLICY,
    A_POSITIVES,
    A_VALUE,
    A_VALUE_SQ,
    COST,
    DECISIONS,
    HOUR_S,
    IMPRESSIONS,
    POSITIVES,
    RESPONSES,
    VALUE,
    ReportCounters,
)

Z95 = 1.959963984540054
DEFAULT_RANGE_S = 24 * 3600.0
MAX_RANGE_S = 92 * 24 * 3600.0  # one query covers at most this long (about a quarter)


def time_range(
    since: float | None, until: float | None, now: float, max_range_s: float = MAX_RANGE_S
) -> tuple[float, float]:
    """``(since, until)`` of a report query: default the last 24 h; bad values name the field."""
    for name, v in (("since", since), ("until", until)):
        if v is not None and not (math.isfinite(v) and 0 <= v < 1e11):
            raise ValidationError(f"{name} must be unix seconds (a finite number >= 0)", name)
    until = now if until is None else until
    since = until - DEFAULT_RANGE_S if since is None else since
    if until < since:
        raise ValidationError("until must not be before since", "until")
    if until - since > max_range_s:
        raise ValidationError(
            f"the range is longer than {max_range_s / 86400:g} days; narrow since", "since"
        )
    return since, until


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def _hours(since: float, until: float) -> tuple[int, float]:
    return int(since // HOUR_S) * HOUR_S, until


# -- volumes ----------------------------------------------------------------------------


def _volume_row(d: int, i: int, p: int, v: float, c: float, responses: dict) -> dict[str, Any]:
    return {
        "decisions": d,
        "impressions": i,
        "responses": dict(sorted(responses.items())),
        "positives": p,
        "success_rate": _rate(p, d),
        "value": round(v, 6),
        "cost": round(c, 6),
    }


def volumes(
    counters: ReportCounters,
    since: float,
    until: float,
    channel: str | None = None,
    offer_id: str | None = None,
) -> dict[str, Any]:
    """Decisions, responses and success rates per hour × channel × offer, and totals."""
    lo, hi = _hours(since, until)
    acc: dict[tuple[int, str, str | None], list] = {}

    def row(hour: int, ch: str, offer: str | None) -> list | None:
        if hour < lo or hour >= hi:
            return None
        if (channel is not None and ch != channel) or (offer_id is not None and offer != offer_id):
            return None
        r = acc.get((hour, ch, offer))
        if r is None:
            r = acc[(hour, ch, offer)] = [0, 0, 0, 0.0, 0.0, {}, 0]
        return r

    for (hour, _e, _a, ch, offer), cell in counters.cells.items():
        r = row(hour, ch, offer)
        if r is not None:
            for j in (DECISIONS, IMPRESSIONS, POSITIVES, VALUE, COST):
                r[j] += cell[j]
            for k, n in cell[RESPONSES].items():
                r[RESPONSES][k] = r[RESPONSES].get(k, 0) + n
    for (hour, ch, offer), n in counters.fallbacks.items():
        r = row(hour, ch, offer)
        if r is not None:
            r[DECISIONS] += n
            r[6] += n
    series = []
    totals: dict[tuple[str, str | None], list] = {}
    for (hour, ch, offer), r in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                     kv[0][2] or "")):  # fmt: skip
        series.append({"ts": hour, "channel": ch, "offer_id": offer, **_volume_row(*r[:6]),
                       "fallbacks": r[6]})  # fmt: skip
        t = totals.setdefault((ch, offer), [0, 0, 0, 0.0, 0.0, {}, 0])
        for j in (DECISIONS, IMPRESSIONS, POSITIVES, VALUE, COST, 6):
            t[j] += r[j]
        for k, n in r[RESPONSES].items():
            t[RESPONSES][k] = t[RESPONSES].get(k, 0) + n
    return {
        "since": since,
        "until": until,
        "bucket_s": HOUR_S,
        "series": series,
        "totals": [
            {"channel": ch, "offer_id": offer, **_volume_row(*t[:6]), "fallbacks": t[6]}
            for (ch, offer), t in sorted(totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        ],
    }


# -- experiments ------------------------------------------------------------------------


def relative_lift(
    n_a: float, sum_a: float, sq_a: float, n_c: float, sum_c: float, sq_c: float
) -> dict[str, Any] | None:
    """Relative lift of arm mean over control mean, ``m_a / m_c - 1``, with a 95 % CI.

    Delta method for the ratio of two independent means: with ``V = s²/n``
    the variance of each mean, ``Var(m_a/m_c) ≈ V_a/m_c² + m_a²·V_c/m_c⁴``.
    ``sq`` is the sum of squared per-decision values (for a 0/1 outcome it is
    the sum itself). None when undefined (fewer than two decisions in an arm,
    or a control mean of zero).
    """
    if n_a < 2 or n_c < 2:
        return None
    m_a, m_c = sum_a / n_a, sum_c / n_c
    if m_c <= 0:
        return None
    var_a = max(0.0, (sq_a - n_a * m_a * m_a) / (n_a - 1)) / n_a
    var_c = max(0.0, (sq_c - n_c * m_c * m_c) / (n_c - 1)) / n_c
    se = math.sqrt(var_a / m_c**2 + m_a**2 * var_c / m_c**4)
    est = m_a / m_c - 1.0
    low, high = est - Z95 * se, est + Z95 * se
    return {
        "estimate": round(est, 6),
        "ci_low": round(low, 6),
        "ci_high": round(high, 6),
        "significant": low > 0 or high < 0,
    }


def _control(arms: dict[str, list], declared: Mapping[str, Any] | None) -> str:
    if declared and declared.get("control") in arms:
        return declared["control"]
    for name, a in sorted(arms.items()):
        if name == "control" or a[A_POLICY] in ("no_message", "holdout"):
            return name
    return sorted(arms)[0]


def experiments(
    counters: ReportCounters,
    since: float,
    until: float,
    declared: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per experiment and arm: success rate, value per decision, lift against control.

    ``declared``: experiment name → ``{"control": arm, "arms": {arm: {"share",
    "policy"}}}`` from the catalogue when it declares experiments; otherwise
    the control is the arm named ``control`` (or the no-message arm, else the
    first by name) and ``share`` is the arm's observed share of decisions.
    """
    lo, hi = _hours(since, until)
    by_exp: dict[str, dict[str, list]] = {}
    for (hour, exp, arm, *_), a in ((k, v) for k, v in counters.arms.items()):
        if exp is None or arm is None or hour < lo or hour >= hi:
            continue
        s = by_exp.setdefault(exp, {}).setdefault(arm, [a[A_POLICY], 0, 0, 0.0, 0.0])
        s[A_POLICY] = a[A_POLICY]
        for j in (A_DECISIONS, A_POSITIVES, A_VALUE, A_VALUE_SQ):
            s[j] += a[j]
    declared = declared or {}
    out = []
    for name in sorted(set(by_exp) | set(declared)):
        decl = declared.get(name) or {}
        arms = by_exp.get(name, {})
        for arm, spec in (decl.get("arms") or {}).items():
            arms.setdefault(arm, [spec.get("policy", "full"), 0, 0, 0.0, 0.0])
        if not arms:
            continue
        control = _control(arms, decl)
        c = arms[control]
        total = sum(a[A_DECISIONS] for a in arms.values())
        rows = []
        for arm, a in sorted(arms.items()):
            n, pos = a[A_DECISIONS], a[A_POSITIVES]
            share = (decl.get("arms") or {}).get(arm, {}).get("share")
            lift = None
            if arm != control:
                rate = relative_lift(n, pos, pos, c[A_DECISIONS], c[A_POSITIVES], c[A_POSITIVES])
                value = relative_lift(n, a[A_VALUE], a[A_VALUE_SQ],
                                      c[A_DECISIONS], c[A_VALUE], c[A_VALUE_SQ])  # fmt: skip
                if rate is not None or value is not None:
                    lift = {"success_rate": rate, "value_per_decision": value}
            rows.append({
                "arm": arm,
                "policy": a[A_POLICY],
                "share": float(share) if share is not None else (_rate(n, total) or 0.0),
                "decisions": n,
                "positives": pos,
                "success_rate": _rate(pos, n),
                "value_per_decision": _rate(a[A_VALUE], n),
                "lift": lift,
            })  # fmt: skip
        out.append({"name": name, "control": control, "arms": rows})
    return {"since": since, "until": until, "experiments": out}


# -- models -----------------------------------------------------------------------------


def binned_auc(decided: list[float], won: list[float]) -> float | None:
    """ROC AUC from per-bin decisions and positives (ties within a bin count half)."""
    pos = [float(w) for w in won]
    neg = [max(0.0, d - w) for d, w in zip(decided, won)]
    npos, nneg = sum(pos), sum(neg)
    if not npos or not nneg:
        return None
    below = 0.0
    total = 0.0
    for p, n in zip(pos, neg):
        total += p * (below + 0.5 * n)
        below += n
    return total / (npos * nneg)


def models(
    counters: ReportCounters,
    since: float,
    until: float,
    adaptive: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Each model (offer@channel): evidence and maturity, AUC over the range and per hour.

    ``adaptive``: model key → the adaptive model's summary (``responses``,
    ``positives``, ``maturity``). A model that is not adaptive (the ONNX
    model's scores for an offer) shows its decisions as evidence and maturity 1.
    """
    lo, hi = _hours(since, until)
    per_key: dict[str, list[tuple[int, list[float], list[float]]]] = {}
    for (hour, key), (decided, won) in counters.auc.items():
        if lo <= hour < hi:
            per_key.setdefault(key, []).append((hour, decided, won))
    out = []
    for key in sorted(set(per_key) | set(adaptive)):
        hours = sorted(per_key.get(key, []), key=lambda h: h[0])
        dec_all = [0.0] * (len(hours[0][1]) if hours else 1)
        won_all = [0.0] * len(dec_all)
        series = []
        for hour, decided, won in hours:
            for j in range(len(dec_all)):
                dec_all[j] += decided[j]
                won_all[j] += won[j]
            auc = binned_auc(decided, won)
            series.append({"ts": hour, "auc": None if auc is None else round(auc, 4),
                           "n": int(sum(decided))})  # fmt: skip
        summary = adaptive.get(key)
        auc = binned_auc(dec_all, won_all)
        if summary is not None:
            evidence, positives = int(summary["responses"]), int(summary["positives"])
            maturity = float(summary["maturity"])
        else:
            evidence, positives, maturity = int(sum(dec_all)), int(sum(won_all)), 1.0
        out.append({
            "key": key,
            "adaptive": summary is not None,
            "evidence": evidence,
            "positives": positives,
            "maturity": maturity,
            "auc": None if auc is None else round(auc, 4),
            "auc_series": series,
        })  # fmt: skip
    return {"since": since, "until": until, "models": out}


# -- health -----------------------------------------------------------------------------


def fallback_series(counters: ReportCounters, since: float, until: float) -> dict[str, Any]:
    """Fallback answers and all decisions per hour."""
    lo, hi = _hours(since, until)
    hours: dict[int, list[int]] = {}
    for (hour, *_), a in counters.arms.items():
        if lo <= hour < hi:
            hours.setdefault(hour, [0, 0])[1] += a[A_DECISIONS]
    for (hour, *_), n in counters.fallbacks.items():
        if lo <= hour < hi:
            h = hours.setdefault(hour, [0, 0])
            h[0] += n
            h[1] += n
    return {
        "total": sum(h[0] for h in hours.values()),
        "series": [
            {"ts": t, "fallbacks": f, "decisions": d} for t, (f, d) in sorted(hours.items())
        ],
    }
