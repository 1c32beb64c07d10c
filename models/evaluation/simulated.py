"""Simulated RTIM interaction history with a known logging policy and known truth.

:func:`simulated_history` writes history rows in the export's schema (see
``docs/evaluation.md``) for customers of the simulator's world
(:mod:`models.learning.simulator`): each row is one inbound decision on web,
app or email for a customer drawn from the simulator's segments, decided by a
**logging policy** that is ε-greedy around the real arbitration — with
probability 1 − ε the arbitrated answer, otherwise uniformly one of the scored
candidates or "no message" — and logged with that choice probability. The
outcome is an acceptance drawn with the simulator's true propensity.

:func:`true_value` is what a candidate policy really earns on those same
contexts (the mean true propensity of the action it picks), which the
off-policy estimates are checked against.

Try ``python -m models.evaluation.simulated --rows 5000 --out var/history.jsonl``
and then ``rtim evaluate --history var/history.jsonl --policy models/demo/catalog.yaml``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.customer.profile import Profile
from models.decisioning.arbitration import PropensityScorer, decide
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.record import DecisionRecord
from models.decisioning.request import DecideRequest
from models.evaluation.replay import NO_MESSAGE, CandidatePolicy
from models.learning.simulator import (
    _AGE,
    _HOLDS,
    _INCOME_MEDIAN,
    DAY,
    PLACEMENT,
    PRODUCTS,
    SEGMENT_SHARE,
    SEGMENTS,
    START,
    decision_context,
    true_propensity,
)

CHANNELS = ("web", "app", "email")


def _customer(rng: np.random.Generator, index: int, now: float) -> Profile:
    seg = SEGMENTS[int(rng.choice(len(SEGMENTS), p=SEGMENT_SHARE))]
    lo, hi = _AGE[seg]
    p = Profile(f"sim-{index}")
    p.attrs = {
        "segment": seg,
        "age": int(rng.integers(lo, hi + 1)),
        "income": round(float(_INCOME_MEDIAN[seg] * math.exp(rng.normal(0.0, 0.35))), -2),
        "tenure_years": round(float(rng.exponential(5.0)), 1),
        "churn_risk": round(float(rng.beta(2.0, 6.0)), 3),
    }
    p.holdings = [prod for i, prod in enumerate(PRODUCTS) if rng.random() < _HOLDS[seg][i]]
    p.first_seen = p.last_seen = now - 30 * DAY
    return p


def simulated_history(
    rows: int,
    catalog: Catalog,
    logging_scorer: PropensityScorer,
    epsilon: float = 0.3,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """``rows`` history rows decided by the ε-greedy logging policy (module docstring)."""
    if not 0.0 < epsilon <= 1.0:
        raise ValueError("epsilon must be in (0, 1]: a logging policy must explore")
    rng = np.random.default_rng(seed)
    for i in range(rows):
        now = START + float(rng.uniform(0, 28 * DAY))
        profile = _customer(rng, i, now)
        channel = CHANNELS[int(rng.integers(len(CHANNELS)))]
        ctx = decision_context(channel, now)
        context = {"hour": ctx["hour"], "weekday": ctx["weekday"]}
        if ctx["device"]:
            context["device"] = ctx["device"]
        placement = PLACEMENT[channel] if channel == "email" else None
        request = DecideRequest(profile.customer_id, (channel,), placement, context, 1)
        packed = base64.b64encode(profile.pack()).decode()
        record = decide(profile, request, catalog, logging_scorer, now)
        yield _row(record, profile, request, packed, rng, epsilon, now)


def _row(
    record: DecisionRecord,
    profile: Profile,
    request: DecideRequest,
    packed: str,
    rng: np.random.Generator,
    epsilon: float,
    now: float,
) -> dict[str, Any]:
    options = [(c["offer_id"], c["channel"], c["treatment"]) for c in record.candidates]
    options.append(None)  # no message
    greedy = None
    if record.offers:
        o = record.offers[0]
        greedy = (o.offer_id, o.channel, o.treatment)
    pick = greedy if rng.random() >= epsilon else options[int(rng.integers(len(options)))]
    prob = (1 - epsilon) * (pick == greedy) + epsilon / len(options)
    by_key = {(c["offer_id"], c["channel"], c["treatment"]): c for c in record.candidates}
    chosen, outcomes = [], []
    if pick is not None:
        cand = by_key[pick]
        chosen.append({"offer_id": pick[0], "channel": pick[1], "treatment": pick[2],
                       "probability": round(prob, 6), "propensity": cand["propensity"],
                       "value": None})  # fmt: skip
        p_true = true_propensity(profile, pick[0], pick[1], now)
        accepted = bool(rng.random() < p_true)
        outcomes.append({"offer_id": pick[0], "outcome": "accepted" if accepted else "rejected",
                         "ts": now + 30.0, "positive": accepted, "value": None})  # fmt: skip
    return {
        "decision_id": record.decision_id,
        "customer_id": profile.customer_id,
        "ts": now,
        "channels": list(request.channels),
        "catalog_version": record.catalog_version,
        "model_version": record.model_version,
        "experiment": None,
        "arm": None,
        "policy": "full",
        "fallback": False,
        "candidates": [{**c, "value": None, "cost": None} for c in record.candidates],
        "chosen": chosen,
        "probability": round(prob, 6) if pick is None else 1.0,
        "context": {
            "profile": packed,
            "request": {
                "channels": list(request.channels),
                "context": request.context,
                "limit": request.limit,
                "placement": request.placement,
            },
        },
        "outcomes": outcomes,
    }


def _request(request: DecideRequest) -> dict[str, Any]:
    return {
        "channels": list(request.channels),
        "context": request.context,
        "limit": request.limit,
        "placement": request.placement,
    }


def true_value(rows: Sequence[dict[str, Any]], policy: CandidatePolicy) -> float:
    """The mean true acceptance probability of ``policy``'s choices on these rows' contexts."""
    total = 0.0
    for i, row in enumerate(rows):
        action = policy.choose(row, f"row {i + 1}")
        if action is None or action == NO_MESSAGE:
            continue
        offer, rest = action.split("@", 1)
        channel = rest.split("/", 1)[0]
        profile = Profile.unpack(row["customer_id"], base64.b64decode(row["context"]["profile"]))
        total += true_propensity(profile, offer, channel, row["ts"])
    return total / len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    from models.learning.scoring import PriorScorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epsilon", type=float, default=0.3)
    ap.add_argument("--catalog", default=str(Path(__file__).parents[1] / "demo" / "catalog.yaml"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    catalog = load_catalog(args.catalog)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        rows = simulated_history(args.rows, catalog, PriorScorer(), args.epsilon, args.seed)
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.rows} rows to {out} (logging: ε-greedy {args.epsilon} on prior scores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
