"""Customer recognition: typed identifiers, the identity map, and profile merges.

Channels name a customer by typed identifiers (``{"cookie": "…", "account":
"…"}``). Each type is *known* (it names a person: ``account``,
``email_sha256``) or *anonymous* (it names a browser or device: ``cookie``,
``device``). This module owns, without Ray:

- :class:`IdentityConfig` and :func:`parse_identifiers`: which types exist,
  validated once;
- identity keys (``"cookie:abc"``, hashed to an identity partition) and the
  deterministic id of a profile created from an identifier;
- :class:`IdentityTable`: one identity shard's map ``key → profile id``;
- :func:`plan_link`: what to claim, merge and repoint for one request;
- :func:`merge_profiles`: folding one profile into another.

**Profile ids.** :func:`new_profile_id` is deterministic so that two ingress
replicas racing on the same new identifier create the same profile:

- the configured ``customer_id_type`` (default ``account``): the value itself,
  so ``{"account": "C1"}`` and the plain ``customer_id: "C1"`` of the existing
  API reach one profile;
- any other known type: ``"known-"`` + blake2b-128 hex of the key (no raw
  e-mail hashes or numbers in profile ids);
- anonymous types: ``"anon-"`` + blake2b-128 hex of the key.

**Linking** (:func:`plan_link`). The survivor is the involved profile holding
the best known identifier (earliest type in the config order), else the oldest
one (earliest first-seen identifier), ties broken by profile id; every other
involved profile is absorbed into it. Unmapped identifiers are claimed for the
survivor. *Conflict:* when the survivor would end up with two different values
of one known type (two account numbers, whether both are in the request or one
is already held by an involved profile), the plan is a conflict naming that
type and nothing is claimed or merged: the caller refuses the event or request
with :class:`IdentityConflict` (HTTP 409). A link that grows the survivor
beyond ``max_identifiers`` drops its oldest anonymous identifiers that the
request does not carry; known identifiers are never dropped.

**Merging** (:func:`merge_profiles`), absorbed into survivor:

===================  ==========================================================
counters             bucket lists added, re-compacted by the profile's rules
first/last_seen      min (ignoring unset) / max
``last`` facts       max per key
attributes           keys on one side kept; on both, the survivor's value
                     unless the absorbed profile's last ``profile_update`` is
                     strictly newer. ``total_spend`` adds;
                     ``credit_check_result`` follows the newer credit check.
                     (Profiles keep no per-attribute times; a key deleted on
                     one side survives from the other.)
consents             most restrictive per channel and for ``all``:
                     False beats True beats missing
history              union by ts, an entry on both sides kept once, then the
                     record_contact bounds (HISTORY_MAX, HISTORY_HORIZON_S)
session              the one with the latest event continues. If the other
                     ended more than the session gap before it, that visit is
                     closed (its non-empty cart becomes the abandoned cart if
                     newer); otherwise the visits join: earliest start, latest
                     event, events by ts, carts added per item (the continuing
                     visit's price), pages of the earlier-started visit first
                     (pages carry no times); all bounded like a live session
holdings             union, survivor's order first
seen event ids       union of unexpired entries, newest SEEN_IDS kept, so a
                     retried event sent to either id is still a duplicate
abandoned_cart       the newer
===================  ==========================================================

A merge records ``last["merged:<absorbed id>"] = absorbed.last_seen``; merging
the same absorbed profile again is a no-op unless it has seen events since,
so a retried merge does not double-count.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, NamedTuple

from models.errors import RtimError, ValidationError
from models.profile import (
    _SEEN,
    HISTORY_HORIZON_S,
    HISTORY_MAX,
    SEEN_IDS,
    SEEN_TTL_S,
    SESSION_EVENTS,
    SESSION_PAGES,
    Profile,
    Session,
    _compact,
)
from models.settings import SettingsError

KNOWN: Literal["known"] = "known"
ANONYMOUS: Literal["anonymous"] = "anonymous"
DEFAULT_TYPES: dict[str, str] = {
    "account": KNOWN,
    "email_sha256": KNOWN,
    "cookie": ANONYMOUS,
    "device": ANONYMOUS,
}
MAX_IDENTIFIER_LEN = 256
MERGED_FACT = "merged"  # last["merged:<id>"]: when that profile was absorbed here
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # no ":" — it separates key parts
_CONFIG_KEYS = ("types", "max_identifiers", "customer_id_type")


class IdentityConflict(RtimError):
    """Identifiers name different customers that must not merge automatically."""

    code = "identity_conflict"


@dataclass(frozen=True)
class IdentityConfig:
    """Identifier types (``known``/``anonymous``, in priority order) and limits."""

    types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    max_identifiers: int = 10  # per request, and per profile after a link
    customer_id_type: str | None = "account"  # its value is the profile id

    def __post_init__(self) -> None:
        if not isinstance(self.types, dict) or not self.types:
            raise SettingsError("setting identity.types must be a non-empty mapping")
        for name, kind in self.types.items():
            if not isinstance(name, str) or not _TYPE_NAME.match(name):
                raise SettingsError(
                    f"setting identity.types: {name!r} is not a valid type name "
                    "(lowercase letters, digits, _; at most 32)"
                )
            if kind not in (KNOWN, ANONYMOUS):
                raise SettingsError(
                    f"setting identity.types.{name} must be 'known' or 'anonymous', got {kind!r}"
                )
        m = self.max_identifiers
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise SettingsError(f"setting identity.max_identifiers must be >= 1, got {m!r}")
        c = self.customer_id_type
        if c is not None and self.types.get(c) != KNOWN:
            raise SettingsError(
                f"setting identity.customer_id_type {c!r} must name a known identifier type"
            )

    @classmethod
    def from_settings_value(cls, value: Any) -> IdentityConfig:
        """Build from the ``identity`` setting (a mapping, or None for defaults)."""
        if value is None:
            return cls()
        if isinstance(value, IdentityConfig):
            return value
        if not isinstance(value, dict):
            raise SettingsError("setting identity must be a mapping")
        for key in value:
            if key not in _CONFIG_KEYS:
                raise SettingsError(
                    f"setting identity: unknown key {key!r}; expected one of {list(_CONFIG_KEYS)}"
                )
        types = value.get("types", DEFAULT_TYPES)
        default_cid = "account" if isinstance(types, dict) and "account" in types else None
        return cls(
            types=dict(types) if isinstance(types, dict) else types,
            max_identifiers=value.get("max_identifiers", 10),
            customer_id_type=value.get("customer_id_type", default_cid),
        )

    def is_known(self, id_type: str) -> bool:
        return self.types.get(id_type) == KNOWN

    def rank(self, id_type: str) -> int:
        """Position of a type in the config: lower is preferred."""
        return list(self.types).index(id_type)


DEFAULT_IDENTITY = IdentityConfig()


def parse_identifiers(raw: Any, field: str, config: IdentityConfig) -> dict[str, str]:
    """Validate an ``identifiers`` object; errors name ``field.<type>``."""
    if not isinstance(raw, dict):
        raise ValidationError("identifiers must be an object of type -> value", field)
    if not raw:
        raise ValidationError("identifiers must name at least one identifier", field)
    if len(raw) > config.max_identifiers:
        raise ValidationError(f"at most {config.max_identifiers} identifiers", field)
    for id_type, value in raw.items():
        if id_type not in config.types:
            raise ValidationError(
                f"unknown identifier type {id_type!r}; expected one of {sorted(config.types)}",
                f"{field}.{id_type}",
            )
        if not isinstance(value, str) or not value:
            raise ValidationError("identifier must be a non-empty string", f"{field}.{id_type}")
        if len(value) > MAX_IDENTIFIER_LEN:
            raise ValidationError(
                f"identifier is longer than {MAX_IDENTIFIER_LEN} characters", f"{field}.{id_type}"
            )
    return raw


# -- keys and ids ------------------------------------------------------------------


def identifier_key(id_type: str, value: str) -> str:
    """The identity-map key (``"cookie:abc"``); it is what picks the identity partition."""
    return f"{id_type}:{value}"


def key_type(key: str) -> str:
    return key.partition(":")[0]


def new_profile_id(id_type: str, value: str, config: IdentityConfig = DEFAULT_IDENTITY) -> str:
    """Deterministic id of a profile first seen with this identifier (see module doc)."""
    if id_type == config.customer_id_type:
        return value
    digest = hashlib.blake2b(identifier_key(id_type, value).encode(), digest_size=16).hexdigest()
    return f"{'known' if config.is_known(id_type) else 'anon'}-{digest}"


# -- the identity map of one shard -------------------------------------------------


class IdentityRecord(NamedTuple):
    """One identifier held by a profile, and since when."""

    key: str
    profile_id: str
    first_seen: float


class IdentityTable:
    """One identity shard's map: identifier key → profile id, and its inverse.

    Each profile holds at most ``max_identifiers`` keys here: a claim or
    repoint beyond that drops the profile's oldest anonymous keys in this
    shard. That is a backstop; :func:`plan_link` enforces the limit across
    shards when given the profiles' records.
    """

    def __init__(self, config: IdentityConfig = DEFAULT_IDENTITY) -> None:
        self.config = config
        self._owner: dict[str, str] = {}
        self._keys: dict[str, dict[str, float]] = {}  # profile id -> {key: first seen}

    def __len__(self) -> int:
        return len(self._owner)

    def resolve(self, keys: Iterable[str]) -> dict[str, str | None]:
        owner = self._owner
        return {k: owner.get(k) for k in keys}

    def records_of(self, profile_ids: Iterable[str]) -> list[IdentityRecord]:
        """Every key this shard holds for these profiles (input to :func:`plan_link`)."""
        return [
            IdentityRecord(k, pid, ts)
            for pid in profile_ids
            for k, ts in self._keys.get(pid, {}).items()
        ]

    def claim(self, key: str, profile_id: str, ts: float) -> str:
        """Map ``key`` to ``profile_id`` unless mapped already; return the owner.

        An owner other than ``profile_id`` means a concurrent request won the
        race: resolve again and re-plan (the new plan merges the two).
        """
        owner = self._owner.get(key)
        if owner is not None:
            return owner
        self._owner[key] = profile_id
        self._keys.setdefault(profile_id, {})[key] = ts
        self._trim(profile_id)
        return profile_id

    def repoint(self, keys: Iterable[str], new_profile_id: str) -> list[str]:
        """Move mapped ``keys`` to ``new_profile_id`` keeping first-seen; return those moved."""
        moved = []
        target = self._keys.setdefault(new_profile_id, {})
        for key in keys:
            old = self._owner.get(key)
            if old is None or old == new_profile_id:
                continue
            target[key] = self._pop(old, key)
            self._owner[key] = new_profile_id
            moved.append(key)
        if not target:
            del self._keys[new_profile_id]
        else:
            self._trim(new_profile_id)
        return moved

    def repoint_profile(self, old_profile_id: str, new_profile_id: str) -> list[str]:
        """Move every key of an absorbed profile held by this shard."""
        return self.repoint(list(self._keys.get(old_profile_id, ())), new_profile_id)

    def release(self, keys: Iterable[str]) -> list[str]:
        """Unmap ``keys`` (identifiers dropped by a link); return those that were mapped."""
        released = []
        for key in keys:
            owner = self._owner.pop(key, None)
            if owner is not None:
                self._pop(owner, key)
                released.append(key)
        return released

    def forget_profile(self, profile_id: str) -> list[str]:
        """Erase a profile's keys (right to erasure); return them."""
        keys = list(self._keys.pop(profile_id, ()))
        for key in keys:
            del self._owner[key]
        return keys

    def to_state(self) -> dict:
        """Plain, msgpack-friendly snapshot; the key → owner map is derived on load."""
        return {
            "version": 1,
            "profiles": {pid: [[k, ts] for k, ts in ks.items()] for pid, ks in self._keys.items()},
        }

    @classmethod
    def from_state(cls, state: dict, config: IdentityConfig = DEFAULT_IDENTITY) -> IdentityTable:
        table = cls(config)
        for pid, entries in state["profiles"].items():
            table._keys[pid] = {k: ts for k, ts in entries}
            for k, _ts in entries:
                table._owner[k] = pid
        return table

    def _pop(self, profile_id: str, key: str) -> float:
        keys = self._keys[profile_id]
        ts = keys.pop(key)
        if not keys:
            del self._keys[profile_id]
        return ts

    def _trim(self, profile_id: str) -> None:
        keys = self._keys[profile_id]
        excess = len(keys) - self.config.max_identifiers
        if excess <= 0:
            return
        oldest = sorted((ts, k) for k, ts in keys.items() if not self.config.is_known(key_type(k)))
        for _ts, k in oldest[:excess]:
            del keys[k]
            del self._owner[k]


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


# -- profile merge -----------------------------------------------------------------


def merge_profiles(
    survivor: Profile, absorbed: Profile, now: float, session_gap_s: float
) -> Profile:
    """Fold ``absorbed`` into ``survivor`` (mutated and returned) by the module's rules.

    ``absorbed`` is left as it was; the caller deletes it once the survivor is stored.
    """
    s, a = survivor, absorbed
    marker = f"{MERGED_FACT}:{a.customer_id}"
    if a.customer_id == s.customer_id or s.last.get(marker, -1.0) >= a.last_seen:
        return s  # already merged (a retry), and nothing new since
    s.attrs = _merge_attrs(s, a)
    for channel, allowed in a.consents.items():
        mine = s.consents.get(channel)
        s.consents[channel] = allowed if mine is None else (mine and allowed)
    for etype, buckets in a.counters.items():
        counts = _merge_buckets(s.counters.get(etype, []), buckets, now)
        if counts:
            s.counters[etype] = counts
    for key, ts in a.last.items():
        if ts > s.last.get(key, -1.0):
            s.last[key] = ts
    if a.first_seen and (not s.first_seen or a.first_seen < s.first_seen):
        s.first_seen = a.first_seen
    s.last_seen = max(s.last_seen, a.last_seen)
    s.history = _merge_history(s.history, a.history)
    s.holdings = s.holdings + [h for h in a.holdings if h not in s.holdings]
    s.seen = _merge_seen(s.seen, a.seen, now)
    s.session, closed = _merge_sessions(s.session, a.session, session_gap_s)
    for cart in (a.abandoned_cart, closed):
        if cart is not None and (s.abandoned_cart is None or cart[0] > s.abandoned_cart[0]):
            s.abandoned_cart = list(cart)
    if closed is not None:
        s.touch(closed[0], "cart_abandoned")
    s.last[marker] = a.last_seen
    return s


def _merge_attrs(s: Profile, a: Profile) -> dict:
    absorbed_newer = a.last.get("profile_update", -1.0) > s.last.get("profile_update", -1.0)
    attrs = dict(s.attrs)
    for key, value in a.attrs.items():
        if key not in attrs or absorbed_newer:
            attrs[key] = value
    if "total_spend" in s.attrs and "total_spend" in a.attrs:  # each side summed its purchases
        spend = float(s.attrs["total_spend"]) + float(a.attrs["total_spend"])
        attrs["total_spend"] = round(spend, 2)
    if "credit_check_result" in s.attrs and "credit_check_result" in a.attrs:
        newer = a if a.last.get("credit_check", -1.0) > s.last.get("credit_check", -1.0) else s
        attrs["credit_check_result"] = newer.attrs["credit_check_result"]
    return attrs


def _merge_buckets(mine: list, theirs: list, now: float) -> list:
    pairs = sorted(chain(zip(mine[0::2], mine[1::2]), zip(theirs[0::2], theirs[1::2])))
    return _compact([x for pair in pairs for x in pair], now)


def _merge_history(mine: list, theirs: list) -> list:
    # An entry on both sides is one contact recorded under both ids; within one
    # side, equal entries are separate contacts and all stay.
    unmatched = Counter(tuple(h) for h in mine)
    extra = []
    for h in theirs:
        t = tuple(h)
        if unmatched[t]:
            unmatched[t] -= 1
        else:
            extra.append(list(h))
    h = sorted(mine + extra, key=lambda e: e[0])
    if not h:
        return h
    cutoff = h[-1][0] - HISTORY_HORIZON_S
    drop = 0
    while drop < len(h) and (h[drop][0] < cutoff or len(h) - drop > HISTORY_MAX):
        drop += 1
    return h[drop:]


def _merge_seen(mine: bytes, theirs: bytes, now: float) -> bytes:
    cutoff = now - SEEN_TTL_S
    newest: dict[bytes, int] = {}
    for ts, dig in chain(_SEEN.iter_unpack(mine), _SEEN.iter_unpack(theirs)):
        if ts >= cutoff and ts > newest.get(dig, -1):
            newest[dig] = ts
    entries = sorted((ts, dig) for dig, ts in newest.items())[-SEEN_IDS:]
    return b"".join(_SEEN.pack(ts, dig) for ts, dig in entries)


def _merge_sessions(
    mine: Session | None, theirs: Session | None, gap_s: float
) -> tuple[Session | None, list | None]:
    """The continuing session, and ``[ts, value, items]`` of a visit closed with a cart."""
    if mine is None or theirs is None:
        other = theirs if mine is None else mine
        return (_copy_session(other) if other is not None else None), None
    newer, older = (theirs, mine) if theirs.last_ts > mine.last_ts else (mine, theirs)
    if newer.last_ts - older.last_ts > gap_s:
        closed = None
        if older.cart:
            items = sum(q for q, _ in older.cart.values())
            closed = [older.last_ts, older.cart_value(), items]
        return _copy_session(newer), closed
    first, second = (older, newer) if older.start <= newer.start else (newer, older)
    cart = {item: [q, p] for item, (q, p) in older.cart.items()}
    for item, (q, p) in newer.cart.items():
        cart[item] = [cart[item][0] + q, p] if item in cart else [q, p]
    events = sorted(mine.events + theirs.events, key=lambda e: e[0])[-SESSION_EVENTS:]
    return (
        Session(
            start=min(mine.start, theirs.start),
            last_ts=newer.last_ts,
            events=[list(e) for e in events],
            cart=cart,
            pages=(first.pages + second.pages)[-SESSION_PAGES:],
        ),
        None,
    )


def _copy_session(s: Session) -> Session:
    return Session(
        s.start,
        s.last_ts,
        [list(e) for e in s.events],
        {k: list(v) for k, v in s.cart.items()},
        list(s.pages),
    )
