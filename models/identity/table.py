"""``IdentityTable``: one identity shard's map from identifier key to profile id."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from models.identity.config import DEFAULT_IDENTITY, IdentityConfig, key_type

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

    def release(self, keys: Iterable[str], owner: str | None = None) -> list[str]:
        """Unmap ``keys``; return those that were mapped.

        With ``owner``, only keys that ``owner`` holds now (compare-and-set: a
        request undoing its own claims never unmaps someone else's).
        """
        released = []
        for key in keys:
            current = self._owner.get(key)
            if current is None or (owner is not None and current != owner):
                continue
            del self._owner[key]
            self._pop(current, key)
            released.append(key)
        return released

    def forget_profile(self, profile_id: str) -> list[str]:
        """Erase a profile's keys (right to erasure); return them."""
        keys = list(self._keys.pop(profile_id, ()))
        for key in keys:
            del self._owner[key]
        return keys

    # -- partition moves (whole links, never trimmed: nothing is lost in transit) -----

    def records_where(self, keep: Callable[[str], bool]) -> list[IdentityRecord]:
        """Every link whose key ``keep`` selects (the links of moving partitions)."""
        return [
            IdentityRecord(k, pid, ts)
            for pid, ks in self._keys.items()
            for k, ts in ks.items()
            if keep(k)
        ]

    def remove(self, keys: Iterable[str]) -> None:
        """Drop these links (handed off to another shard)."""
        self.release(keys)

    def add(self, records: Iterable[Iterable]) -> None:
        """Take in links ``[key, profile id, first seen]`` as they are (taken over)."""
        for key, pid, ts in records:
            self.remove([key])
            self._owner[key] = pid
            self._keys.setdefault(pid, {})[key] = ts

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
