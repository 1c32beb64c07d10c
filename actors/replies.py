"""The typed replies of shard actors: the one protocol between ingress and shards.

A shard method answers either its result or one of these. ``ShardRegion``
(``serving/region.py``) decodes them in one place, so routes never look at
special keys:

- a whole call can be refused: :class:`StaleEpoch` (the caller's partition
  map is not the shard's: refresh it and route again), :class:`ShardUnavailable`
  (the shard cannot write or is not recovered: 503), :class:`Failed` (the
  request is wrong in a way only the shard could see: the error it names);
- one customer inside a call can be :class:`Moved` (merged into another
  profile: follow it), :class:`Expired` (a decide whose deadline passed before
  the shard got to it: the caller already answered with the fallback) or
  :class:`Erased` (addressed through a cached identifier, but the profile was
  erased: resolve the identifiers again).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.errors import RtimError, error_from_dict


@dataclass(frozen=True, slots=True)
class StaleEpoch:
    """The shard works with partition-map ``epoch``; the caller's differs."""

    epoch: int


@dataclass(frozen=True, slots=True)
class ShardUnavailable:
    """The shard cannot take the call now (storage failed, not recovered)."""

    reason: str
    code: str = "storage_unavailable"


@dataclass(frozen=True, slots=True)
class Failed:
    """The call was refused for a reason the client must fix (e.g. a bad catalogue)."""

    code: str
    message: str
    field: str | None = None

    @classmethod
    def of(cls, exc: RtimError) -> Failed:
        return cls(exc.code, exc.message, exc.field)

    def error(self) -> RtimError:
        return error_from_dict({"code": self.code, "message": self.message, "field": self.field})


@dataclass(frozen=True, slots=True)
class Moved:
    """The profile was merged into ``to``; calls for it belong there now."""

    to: str


@dataclass(frozen=True, slots=True)
class Expired:
    """A decide request reached the shard after its deadline; nothing was recorded."""


@dataclass(frozen=True, slots=True)
class Erased:
    """The profile was erased after the caller's cached identifier lookup."""

    customer_id: str


Refusal = StaleEpoch | ShardUnavailable | Failed
CustomerOutcome = Moved | Expired | Erased
