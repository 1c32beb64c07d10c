"""Contact policies: frequency caps and suppression, counted from contact history.

A :class:`ContactPolicy` counts entries of one ``kind`` in ``profile.history``
(``impression`` for caps, a response outcome such as ``rejected`` for
suppression) over a period, keyed by ``scope``:

- ``offer``: per offer ("an offer at most 3 times a day");
- ``group``: per offer group, history offer ids mapped to groups by the catalogue;
- ``channel``: per channel ("at most 1 email a week", with ``channels: [email]``);
- ``all``: one count over everything the policy covers.

``channels`` restricts both what is counted and which candidates are capped;
``applies_to`` does the same for offers. A candidate is removed once the count
reaches ``max``.

A :class:`ContactLedger` holds the counts for one decision: it scans the
history once per policy, lazily, and also counts the offers already chosen in
this decision, so ``limit: 3`` cannot send three emails past a one-email cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.customer.profile import IMPRESSION, Profile
from models.decisioning.facts import parse_duration
from models.decisioning.rules import OfferSelector, fail, parse_selector

SCOPES = ("offer", "group", "channel", "all")
COUNTABLE = ("impression", "accepted", "rejected", "clicked", "ignored")

OfferInfo = Mapping[str, tuple[str, tuple[str, ...]]]  # offer id -> (group, tags)


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    """A cap (or suppression) of ``max`` ``count`` entries per ``scope`` over ``period_s``."""

    id: str
    reason: str
    scope: str
    count: str
    max: int
    period_s: float
    channels: frozenset[str] | None  # None = every channel
    selector: OfferSelector | None  # None = every offer
    index: int
    spec: dict  # as written, for to_dict()

    def covers(self, offer_id: str, group: str, tags: Sequence[str], channel: str | None) -> bool:
        """True when this policy counts (and caps) that offer on that channel."""
        if self.channels is not None and channel not in self.channels:
            return False
        return self.selector is None or self.selector.matches(offer_id, group, tags)

    def key(self, offer_id: str, group: str | None, channel: str | None) -> Any:
        scope = self.scope
        if scope == "offer":
            return offer_id
        if scope == "group":
            return group
        if scope == "channel":
            return channel
        return None

    def tally(self, history: list, now: float, offers: OfferInfo) -> dict[Any, int]:
        """Counts per key of matching history entries within the period."""
        counts: dict[Any, int] = {}
        cutoff = now - self.period_s
        kind = self.count
        needs_offer = self.selector is not None or self.scope == "group"
        for ts, offer_id, channel, entry_kind in reversed(history):
            if ts < cutoff:
                break  # history is kept sorted by ts
            if entry_kind != kind:
                continue
            group: str | None = None
            if needs_offer:
                info = offers.get(offer_id)
                if info is None:
                    continue  # an offer no longer in the catalogue
                group = info[0]
                if not self.covers(offer_id, group, info[1], channel):
                    continue
            elif self.channels is not None and channel not in self.channels:
                continue
            k = self.key(offer_id, group, channel)
            counts[k] = counts.get(k, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return dict(self.spec)


class ContactLedger:
    """Contact counts for one decision: history plus what this decision chose."""

    __slots__ = ("_history", "_now", "_offers", "_policies", "_tallies")

    def __init__(
        self, policies: Sequence[ContactPolicy], profile: Profile, now: float, offers: OfferInfo
    ) -> None:
        self._policies = policies
        self._history = profile.history
        self._now = now
        self._offers = offers
        self._tallies: list[dict | None] = [None] * len(policies)

    def _counts(self, policy: ContactPolicy) -> dict:
        t = self._tallies[policy.index]
        if t is None:
            t = self._tallies[policy.index] = (
                policy.tally(self._history, self._now, self._offers) if self._history else {}
            )
        return t

    def blocking(self, cand: Any) -> ContactPolicy | None:
        """The first policy whose count for ``cand`` has reached its max, or None.

        ``cand.contact_keys`` pairs each policy covering it with its count key
        (precomputed by the catalogue).
        """
        tallies = self._tallies
        for policy, key in cand.contact_keys:
            counts = tallies[policy.index]
            if counts is None:
                counts = self._counts(policy)
            if counts and counts.get(key, 0) >= policy.max:
                return policy
        return None

    def add(self, cand: Any) -> None:
        """Count ``cand`` as contacted (an impression) for the rest of this decision."""
        for policy, key in cand.contact_keys:
            if policy.count == IMPRESSION:
                counts = self._counts(policy)
                counts[key] = counts.get(key, 0) + 1


def parse_contact_policy(
    spec: Any, field: str, index: int, channels: Mapping[str, Any], offers: OfferInfo
) -> ContactPolicy:
    """Validate one ``contact_policies`` entry; ``field`` already names it."""
    if not isinstance(spec, dict):
        raise fail(field, "a contact policy must be a mapping")
    allowed = {"id", "reason", "scope", "count", "max", "period", "channels", "applies_to"}
    unknown = set(spec) - allowed
    if unknown:
        raise fail(field, f"unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
    reason = spec.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise fail(f"{field}.reason", "every contact policy needs a human-readable reason")
    scope = spec.get("scope")
    if scope not in SCOPES:
        raise fail(f"{field}.scope", f"scope must be one of {list(SCOPES)}")
    count = spec.get("count", IMPRESSION)
    if count not in COUNTABLE:
        raise fail(f"{field}.count", f"count must be one of {list(COUNTABLE)}")
    limit = spec.get("max")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise fail(f"{field}.max", "max must be an integer >= 1")
    if spec.get("period") is None:
        raise fail(f"{field}.period", "period is required, e.g. '7d'")
    try:
        period_s = parse_duration(spec["period"])
    except (ValueError, TypeError) as exc:
        raise fail(f"{field}.period", f"period is required: {exc}") from None
    if period_s <= 0:
        raise fail(f"{field}.period", "period must be > 0")
    chans = spec.get("channels")
    if chans is not None:
        if not isinstance(chans, list) or not chans:
            raise fail(f"{field}.channels", "channels must be a non-empty list")
        for i, ch in enumerate(chans):
            if ch not in channels:
                raise fail(f"{field}.channels[{i}]", f"unknown channel {ch!r}")
    groups = {g for g, _ in offers.values()}
    tags = {t for _, ts in offers.values() for t in ts}
    selector = parse_selector(
        spec.get("applies_to"), f"{field}.applies_to", set(offers), groups, tags
    )
    return ContactPolicy(
        id=spec["id"], reason=reason.strip(), scope=scope, count=count, max=limit,
        period_s=period_s, channels=frozenset(chans) if chans is not None else None,
        selector=selector, index=index, spec=dict(spec),
    )  # fmt: skip
