"""A candidate policy (catalogue + model) replayed on RTIM interaction-history rows.

For each history row (the contract in ``docs/evaluation.md``) the logged
context — ``context.profile``, base64 of ``Profile.pack()`` just before the
decision, and ``context.request`` — rebuilds the profile and the
:class:`~models.decisioning.request.DecideRequest`, and the real
:func:`~models.decisioning.arbitration.decide` runs with the candidate
catalogue and scorer at the logged time. Its answer is the candidate's action.

- An *action* is ``offer@channel/treatment``, or :data:`NO_MESSAGE`.
- The candidate is replayed **without adaptive learners** (their state at each
  past moment is not in the log): adaptive offers score with the model's
  propensity, so the candidate is deterministic and its probability for its
  own action is 1.
- Rows are skipped, and counted by reason, when they cannot be evaluated:
  ``no_context`` (history context logging was off), ``fallback`` (a timeout
  answer, not a policy's choice), ``slate`` (a decision of more than one offer:
  a slate's joint probability is not logged).
- The logged probability is the chosen offer's ``probability``, or the row's
  ``probability`` for "no message"; missing ones are left to the estimators,
  which count and warn.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from models.customer.profile import Profile
from models.decisioning.arbitration import PropensityScorer, decide
from models.decisioning.catalog import Catalog
from models.decisioning.request import parse_decide_request
from models.errors import ValidationError
from models.evaluation.estimators import BanditLog
from models.evaluation.logs import REWARDS, LogError

NO_MESSAGE = "(no message)"


def action_key(offer_id: str, channel: str, treatment: str) -> str:
    return f"{offer_id}@{channel}/{treatment}"


def history_reward(row: dict[str, Any], kind: str = "positive") -> float:
    """1 if any outcome is positive (``positive``), or the outcomes' value sum (``value``)."""
    outcomes = row.get("outcomes") or []
    if kind == "value":
        return float(sum(o.get("value") or 0.0 for o in outcomes if isinstance(o, dict)))
    return float(any(isinstance(o, dict) and o.get("positive") for o in outcomes))


class CandidatePolicy:
    """A catalogue and a propensity scorer, as a policy to evaluate on history rows."""

    def __init__(
        self,
        catalog: Catalog,
        scorer: PropensityScorer,
        reward: str = "positive",
        session_gap_s: float = 1800.0,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}")
        self.catalog = catalog
        self.scorer = scorer
        self.reward = reward
        self.session_gap_s = session_gap_s
        self.actions: dict[str, int] = {}  # the candidate's choices, counted

    def choose(self, row: dict[str, Any], where: str) -> str | None:
        """The candidate's action for a history row; None when the row has no context."""
        context = row.get("context")
        if context is None:
            return None
        if not isinstance(context, dict) or not isinstance(context.get("request"), dict):
            raise LogError(f"{where}.context must hold profile and request", f"{where}.context")
        customer_id = row.get("customer_id")
        if not isinstance(customer_id, str) or not customer_id:
            raise LogError(f"{where}.customer_id must be a string", f"{where}.customer_id")
        try:
            blob = base64.b64decode(context.get("profile") or "", validate=True)
            profile = Profile.unpack(customer_id, blob)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise LogError(
                f"{where}.context.profile is not a packed profile ({exc})",
                f"{where}.context.profile",
            ) from None
        body = {k: v for k, v in context["request"].items() if v is not None}
        try:
            request = parse_decide_request({**body, "customer_id": customer_id})
        except ValidationError as exc:
            field = f"{where}.context.request.{exc.field}" if exc.field else where
            raise LogError(f"{field}: {exc.message}", field) from None
        record = decide(profile, request, self.catalog, self.scorer, _ts(row, where),
                        self.session_gap_s)  # fmt: skip
        if record.offers:
            o = record.offers[0]
            key = action_key(o.offer_id, o.channel, o.treatment)
        else:
            key = NO_MESSAGE
        self.actions[key] = self.actions.get(key, 0) + 1
        return key

    def add_row(self, log: BanditLog, row: dict[str, Any], where: str) -> str | None:
        """Add one history row to ``log``; the reason it was skipped, or None."""
        if row.get("fallback"):
            return "fallback"
        chosen = row.get("chosen")
        if not isinstance(chosen, list):
            raise LogError(f"{where}.chosen must be a list", f"{where}.chosen")
        if len(chosen) > 1:
            return "slate"
        if chosen:
            c = chosen[0]
            if not isinstance(c, dict) or not all(
                isinstance(c.get(k), str) for k in ("offer_id", "channel", "treatment")
            ):
                raise LogError(
                    f"{where}.chosen[0] needs offer_id, channel and treatment",
                    f"{where}.chosen[0]",
                )
            logged = action_key(c["offer_id"], c["channel"], c["treatment"])
            mu = c.get("probability")
        else:
            logged, mu = NO_MESSAGE, row.get("probability")
        if mu is not None and (isinstance(mu, bool) or not isinstance(mu, (int, float))):
            raise LogError(f"{where}: the logged probability must be a number", where)
        target = self.choose(row, where)
        if target is None:
            return "no_context"
        channels = row.get("channels") or []
        placement = (row["context"]["request"].get("placement")) or ""
        stratum = "|".join(str(c) for c in channels) + "|" + str(placement)
        log.add(logged, history_reward(row, self.reward), mu, {target: 1.0}, stratum)
        return None


def _ts(row: dict[str, Any], where: str) -> float:
    ts = row.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise LogError(f"{where}.ts must be unix seconds", f"{where}.ts")
    return float(ts)
