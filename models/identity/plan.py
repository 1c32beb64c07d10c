"""``plan_link``: what one request's identifiers mean for the identity map.

It picks the surviving profile, the profiles to absorb into it, the
identifiers to claim and to drop, or a conflict (see ``models/identity``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain

from models.errors import IdentityConflict
from models.identity.config import IdentityConfig, identifier_key, key_type, new_profile_id
from models.identity.table import IdentityRecord

# -- link planning -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """What to do for one request's identifiers; see :func:`plan_link`.

    Carried out in order: create/get ``survivor``; claim ``claims`` for it;
    merge each ``absorbed`` profile into it and repoint ``repoint`` (or
    :meth:`IdentityTable.repoint_profile` on every shard); release ``dropped``.
    """

    survivor: str | None  # None only on conflict
    new_profile: bool = False  # no identifier was mapped: the survivor id is new
    absorbed: tuple[str, ...] = ()  # merge these into the survivor, in this order
    claims: tuple[str, ...] = ()  # unmapped keys to claim for the survivor
    repoint: tuple[str, ...] = ()  # keys of absorbed profiles, to move to the survivor
    dropped: tuple[str, ...] = ()  # oldest anonymous keys beyond max_identifiers
    conflict: str | None = None  # the known identifier type that names two customers

    @property
    def noop(self) -> bool:
        return not (self.new_profile or self.absorbed or self.claims or self.dropped) and (
            self.conflict is None
        )

    def conflict_error(self, field: str) -> IdentityConflict:
        """The error to raise; ``field`` is the identifiers object (``events[2].identifiers``)."""
        return IdentityConflict(
            f"identifiers of type {self.conflict!r} name different customers; "
            "they are not merged automatically",
            f"{field}.{self.conflict}",
        )


def plan_link(
    identifiers: Mapping[str, str],
    resolved: Mapping[str, str | None],
    config: IdentityConfig,
    held: Iterable[IdentityRecord] = (),
) -> LinkPlan:
    """Decide survivor, merges, claims and drops for a request's identifiers.

    ``resolved`` maps each identifier key to its profile id (None or missing:
    unmapped). ``held`` are the records of the resolved profiles' identifiers
    (:meth:`IdentityTable.records_of` from every shard); without them the
    plan sees only the request, so it cannot see a conflicting known
    identifier the request does not carry, nor enforce ``max_identifiers``.
    """
    request = {identifier_key(t, v): t for t, v in identifiers.items()}
    owners = {k: resolved.get(k) for k in request}
    # profile id -> {key: first seen}; request keys come from ``resolved`` (fresher)
    holds: dict[str, dict[str, float]] = {pid: {} for pid in owners.values() if pid is not None}
    for r in held:
        if r.profile_id in holds and (r.key not in owners or owners[r.key] == r.profile_id):
            holds[r.profile_id][r.key] = r.first_seen
    for k, pid in owners.items():
        if pid is not None:
            holds[pid].setdefault(k, math.inf)

    conflict = _conflict(request, holds, config)
    if conflict is not None:
        return LinkPlan(None, conflict=conflict)
    claims = tuple(k for k, pid in owners.items() if pid is None)
    if not holds:
        best = min(identifiers, key=lambda t: (not config.is_known(t), config.rank(t)))
        survivor = new_profile_id(best, identifiers[best], config)
        return LinkPlan(survivor, new_profile=True, claims=claims)

    def rank(pid: str) -> tuple[int, float, str]:
        known = [config.rank(key_type(k)) for k in holds[pid] if config.is_known(key_type(k))]
        return (min(known, default=len(config.types)), min(holds[pid].values()), pid)

    survivor, *absorbed = sorted(holds, key=rank)
    if not (claims or absorbed):
        return LinkPlan(survivor)
    final = {k: ts for pid in (survivor, *absorbed) for k, ts in holds[pid].items()}
    excess = len(final) + len(claims) - config.max_identifiers
    droppable = sorted(
        (ts, k) for k, ts in final.items() if k not in request and not config.is_known(key_type(k))
    )
    dropped = {k for _ts, k in droppable[: max(excess, 0)]}
    repoint = sorted(k for pid in absorbed for k in holds[pid] if k not in dropped)
    return LinkPlan(
        survivor,
        absorbed=tuple(absorbed),
        claims=claims,
        repoint=tuple(repoint),
        dropped=tuple(sorted(dropped)),
    )


def _conflict(
    request: Mapping[str, str], holds: Mapping[str, Mapping[str, float]], config: IdentityConfig
) -> str | None:
    """The first known type with two values among the request and the involved profiles."""
    values: dict[str, set[str]] = {}
    for key in chain(request, *holds.values()):
        t = key_type(key)
        if config.is_known(t):
            values.setdefault(t, set()).add(key)
    for t in config.types:
        if len(values.get(t, ())) > 1:
            return t
    return None
