"""Experiments and the default control group: which policy variant decides for whom.

An experiment (the catalogue's ``experiments`` list, and the optional
``control_group`` that switches a no-message holdout on for every channel)
splits customers into arms by a hash of ``(salt, customer id)`` into one of
:data:`BUCKETS` buckets. Each arm owns a set of buckets and names a policy
variant (:data:`POLICIES`): ``full``, ``propensity_only``, ``random``,
``no_message``, ``frozen`` or ``model:<version>``.

- **Stable.** The bucket depends only on the salt and the customer id (blake2b,
  never Python's salted ``hash``), so every shard, replica and restart puts a
  customer in the same arm, on every channel. After an identity merge the
  survivor's id decides (the absorbed profile's decisions stop).
- **Minimal moves.** The bucket→arm allocation is part of the catalogue
  (:meth:`Experiment.to_dict` writes it as ranges), so it is versioned with
  it. A new catalogue's experiment starts from the previous allocation of the
  same name and salt (:func:`rebalance`): arms over their new share give up
  their surplus buckets, arms under it take exactly those, and nobody else
  moves. Shares 50/50 → 60/40 moves 10 % of the customers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from models.decisioning.rules import check_id, fail

BUCKETS = 10_000
BASE_POLICIES = ("full", "propensity_only", "random", "no_message", "frozen")
MODEL_PREFIX = "model:"
CONTROL = "control"  # the default control group's experiment and holdout arm
TREATED = "nba"  # the default control group's other arm
SHARE_TOLERANCE = 1e-6
_EXPERIMENT_KEYS = frozenset({"name", "salt", "channels", "control", "arms", "allocation",
                              "description"})  # fmt: skip
_ARM_KEYS = frozenset({"name", "policy", "share"})
_CONTROL_KEYS = frozenset({"share", "channels", "salt", "allocation"})


def bucket_of(salt: str, customer_id: str) -> int:
    """The customer's bucket (0..BUCKETS-1) in an experiment with this salt."""
    digest = hashlib.blake2b(f"{salt}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    policy: str
    share: float

    @property
    def model_version(self) -> str | None:
        """The model version a ``model:<version>`` arm scores with."""
        return self.policy[len(MODEL_PREFIX) :] if self.policy.startswith(MODEL_PREFIX) else None


@dataclass(frozen=True, slots=True)
class Assignment:
    """The experiment and arm one decision runs under."""

    experiment: str
    arm: str
    policy: str


class Experiment:
    """Arms with shares, a salt, the channels it covers and its bucket allocation."""

    def __init__(
        self,
        name: str,
        salt: str,
        arms: tuple[Arm, ...],
        control: str,
        channels: frozenset[str] | None,
        allocation: bytes,
        description: str | None = None,
        default_control: bool = False,
    ) -> None:
        self.name = name
        self.salt = salt
        self.arms = arms
        self.control = control
        self.channels = channels  # None: every channel
        self.allocation = allocation  # bucket -> arm index
        self.description = description
        self.default_control = default_control
        self._assignments = tuple(Assignment(name, a.name, a.policy) for a in arms)

    def assign(self, customer_id: str) -> Assignment:
        return self._assignments[self.allocation[bucket_of(self.salt, customer_id)]]

    def covers(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels

    def counts(self) -> list[int]:
        return [self.allocation.count(i) for i in range(len(self.arms))]

    def ranges(self) -> list[list]:
        """The allocation as ``[first bucket, end bucket, arm name]`` runs."""
        out: list[list] = []
        for b, i in enumerate(self.allocation):
            name = self.arms[i].name
            if out and out[-1][2] == name and out[-1][1] == b:
                out[-1][1] = b + 1
            else:
                out.append([b, b + 1, name])
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.default_control:
            out: dict[str, Any] = {"share": self.arms[0].share, "salt": self.salt}
            if self.channels is not None:
                out["channels"] = sorted(self.channels)
            out["allocation"] = self.ranges()
            return out
        out = {"name": self.name, "salt": self.salt}
        if self.description is not None:
            out["description"] = self.description
        if self.channels is not None:
            out["channels"] = sorted(self.channels)
        out["control"] = self.control
        out["arms"] = [{"name": a.name, "policy": a.policy, "share": a.share} for a in self.arms]
        out["allocation"] = self.ranges()
        return out


class Experiments:
    """The catalogue's experiments; :meth:`assign` picks the one a decision runs under.

    The default control group is consulted first: a customer in its holdout
    gets no message on every covered channel. Otherwise the first experiment
    (catalogue order) covering the request's first channel assigns the arm;
    with none, a customer outside the holdout is recorded in the control
    group's ``nba`` arm.
    """

    def __init__(self, control: Experiment | None, experiments: tuple[Experiment, ...]) -> None:
        self.control = control
        self.experiments = experiments
        self.by_name = {e.name: e for e in experiments}
        if control is not None:
            self.by_name[control.name] = control
        self.model_versions = sorted(
            {a.model_version for e in self.by_name.values() for a in e.arms if a.model_version}
        )

    def __bool__(self) -> bool:
        return self.control is not None or bool(self.experiments)

    def assign(self, customer_id: str, channel: str) -> Assignment | None:
        """The experiment and arm of a decision on ``channel`` (None: no experiment)."""
        treated = None
        control = self.control
        if control is not None and control.covers(channel):
            treated = control.assign(customer_id)
            if treated.arm == CONTROL:
                return treated
        for e in self.experiments:
            if e.covers(channel):
                return e.assign(customer_id)
        return treated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.control is not None:
            out["control_group"] = self.control.to_dict()
        if self.experiments:
            out["experiments"] = [e.to_dict() for e in self.experiments]
        return out


NO_EXPERIMENTS = Experiments(None, ())


# -- allocation -------------------------------------------------------------------------


def targets(shares: list[float]) -> list[int]:
    """Buckets per arm: shares × BUCKETS, rounded by largest remainder to sum to BUCKETS."""
    raw = [s * BUCKETS for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: BUCKETS - sum(counts)]:
        counts[i] += 1
    return counts


def initial_allocation(shares: list[float]) -> bytearray:
    """Contiguous runs of buckets, one per arm, in arm order."""
    out = bytearray()
    for i, n in enumerate(targets(shares)):
        out.extend(bytes([i]) * n)
    return out


def rebalance(previous: bytes | bytearray, shares: list[float]) -> bytearray:
    """The allocation for new shares that moves the fewest buckets from ``previous``.

    Arms over their target release their highest-numbered buckets; arms under
    it take the released buckets in ascending order. Exactly
    ``sum(max(0, old - new))`` buckets change arm, which is the minimum.
    """
    alloc = bytearray(previous)
    want = targets(shares)
    have = [alloc.count(i) for i in range(len(shares))]
    freed: list[int] = []
    for i, (h, w) in enumerate(zip(have, want)):
        if h > w:
            mine = [b for b in range(BUCKETS - 1, -1, -1) if alloc[b] == i]
            freed.extend(mine[: h - w])
    freed.sort()
    it = iter(freed)
    for i, (h, w) in enumerate(zip(have, want)):
        for _ in range(max(0, w - h)):
            alloc[next(it)] = i
    return alloc


# -- loading ----------------------------------------------------------------------------


def load_experiments(
    data: dict, channels: dict, previous: Experiments | None = None
) -> Experiments:
    """Validate ``control_group`` and ``experiments`` of a catalogue mapping.

    ``previous``: the experiments of the catalogue this one replaces; an
    experiment with the same name and salt keeps its allocation (rebalanced).
    """
    previous = previous or NO_EXPERIMENTS
    control = None
    raw_control = data.get("control_group")
    if raw_control is not None:
        control = _control_group(raw_control, channels, previous)
    raw = data.get("experiments")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise fail("experiments", "must be a list of experiments")
    experiments: list[Experiment] = []
    seen: set[str] = {CONTROL} if control is not None else set()
    for i, spec in enumerate(raw):
        e = _experiment(spec, f"experiments[{i}]", channels, previous)
        if e.name in seen:
            raise fail(f"experiments[{e.name}].name", f"experiment {e.name!r} is declared twice")
        seen.add(e.name)
        experiments.append(e)
    return Experiments(control, tuple(experiments))


def _channels(spec: dict, field: str, channels: dict) -> frozenset[str] | None:
    raw = spec.get("channels")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise fail(f"{field}.channels", "must be a non-empty list of channel names")
    for ch in raw:
        if ch not in channels:
            raise fail(f"{field}.channels", f"unknown channel {ch!r}")
    return frozenset(raw)


def _share(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise fail(field, "share must be a number from 0 to 1")
    return float(value)


def _salt(spec: dict, field: str, default: str) -> str:
    salt = spec.get("salt", default)
    if not isinstance(salt, str) or not salt or len(salt) > 128:
        raise fail(f"{field}.salt", "salt must be a non-empty string of at most 128 characters")
    return salt


def _allocation(
    spec: dict, field: str, arms: tuple[Arm, ...], before: Experiment | None
) -> bytearray:
    """The written allocation, else the previous catalogue's, rebalanced to the shares."""
    shares = [a.share for a in arms]
    raw = spec.get("allocation")
    if raw is not None:
        return rebalance(_parse_ranges(raw, f"{field}.allocation", arms), shares)
    if before is not None:
        names = {a.name: i for i, a in enumerate(arms)}
        old = before.allocation
        if all(a.name in names for a in before.arms):
            remap = bytes(names[a.name] for a in before.arms)
            return rebalance(bytes(remap[i] for i in old), shares)
        # Arms were removed: their buckets are freed, everyone else keeps theirs.
        keep = [names.get(a.name, -1) for a in before.arms]
        alloc = bytearray(BUCKETS)
        orphans = []
        for b, i in enumerate(old):
            if keep[i] < 0:
                orphans.append(b)
            else:
                alloc[b] = keep[i]
        return _fill_orphans(alloc, orphans, shares)
    return initial_allocation(shares)


def _fill_orphans(alloc: bytearray, orphans: list[int], shares: list[float]) -> bytearray:
    want = targets(shares)
    owned = set(range(BUCKETS)) - set(orphans)
    have = [0] * len(shares)
    for b in owned:
        have[alloc[b]] += 1
    it = iter(orphans)
    for i in range(len(shares)):
        for _ in range(max(0, want[i] - have[i])):
            b = next(it, None)
            if b is None:
                break
            alloc[b] = i
            have[i] += 1
    for b in it:  # only if kept arms are over target: give leftovers to the first arm
        alloc[b] = 0
    return rebalance(alloc, shares)


def _parse_ranges(raw: Any, field: str, arms: tuple[Arm, ...]) -> bytearray:
    names = {a.name: i for i, a in enumerate(arms)}
    if not isinstance(raw, list):
        raise fail(field, "must be a list of [first bucket, end bucket, arm] runs")
    alloc = bytearray(BUCKETS)
    expect = 0
    for k, run in enumerate(raw):
        ok = (isinstance(run, list) and len(run) == 3 and all(isinstance(x, int)
              and not isinstance(x, bool) for x in run[:2]))  # fmt: skip
        if not ok or run[0] != expect or not run[0] < run[1] <= BUCKETS:
            raise fail(f"{field}[{k}]", f"runs must cover buckets 0..{BUCKETS} in order")
        if run[2] not in names:
            raise fail(f"{field}[{k}]", f"unknown arm {run[2]!r}")
        alloc[run[0] : run[1]] = bytes([names[run[2]]]) * (run[1] - run[0])
        expect = run[1]
    if expect != BUCKETS:
        raise fail(field, f"runs must cover buckets 0..{BUCKETS}")
    return alloc


def _policy(value: Any, field: str) -> str:
    if isinstance(value, str):
        if value in BASE_POLICIES:
            return value
        if value.startswith(MODEL_PREFIX) and len(value) > len(MODEL_PREFIX):
            check_id(value[len(MODEL_PREFIX) :], field)
            return value
    raise fail(field, f"unknown policy {value!r}; expected one of {list(BASE_POLICIES)} "
                      "or 'model:<version>'")  # fmt: skip


def _experiment(spec: Any, field: str, channels: dict, previous: Experiments) -> Experiment:
    if not isinstance(spec, dict):
        raise fail(field, "an experiment must be a mapping")
    name = check_id(spec.get("name"), f"{field}.name")
    field = f"experiments[{name}]"
    for key in spec:
        if key not in _EXPERIMENT_KEYS:
            expected = sorted(_EXPERIMENT_KEYS)
            raise fail(f"{field}.{key}", f"unknown key {key!r}; expected {expected}")
    if name == CONTROL:
        raise fail(f"{field}.name", f"{CONTROL!r} is the default control group's name")
    salt = _salt(spec, field, name)
    raw_arms = spec.get("arms")
    if not isinstance(raw_arms, list) or len(raw_arms) < 2:
        raise fail(f"{field}.arms", "an experiment needs a list of at least two arms")
    arms: list[Arm] = []
    for k, a in enumerate(raw_arms):
        if not isinstance(a, dict):
            raise fail(f"{field}.arms[{k}]", "an arm must be a mapping")
        arm_name = check_id(a.get("name"), f"{field}.arms[{k}].name")
        at = f"{field}.arms[{arm_name}]"
        for key in a:
            if key not in _ARM_KEYS:
                raise fail(f"{at}.{key}", f"unknown key {key!r}; expected {sorted(_ARM_KEYS)}")
        if any(x.name == arm_name for x in arms):
            raise fail(f"{at}.name", f"arm {arm_name!r} is declared twice")
        arms.append(Arm(arm_name, _policy(a.get("policy", "full"), f"{at}.policy"),
                        _share(a.get("share"), f"{at}.share")))  # fmt: skip
    if len(arms) > 255:
        raise fail(f"{field}.arms", "at most 255 arms")
    total = sum(a.share for a in arms)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise fail(f"{field}.arms", f"arm shares add up to {total:g}, not 1")
    control = spec.get("control", arms[0].name)
    if control not in {a.name for a in arms}:
        raise fail(f"{field}.control", f"unknown arm {control!r}")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise fail(f"{field}.description", "must be a string")
    before = previous.by_name.get(name)
    if before is not None and before.salt != salt:
        before = None  # a new salt is a new experiment: everyone is dealt again
    arms_t = tuple(arms)
    alloc = _allocation(spec, field, arms_t, before)
    return Experiment(name, salt, arms_t, control, _channels(spec, field, channels),
                      bytes(alloc), description)  # fmt: skip


def _control_group(spec: Any, channels: dict, previous: Experiments) -> Experiment:
    field = "control_group"
    if isinstance(spec, (bool, int, float)):
        spec = {"share": spec}
    if not isinstance(spec, dict):
        raise fail(field, "must be a mapping like {share: 0.02}")
    for key in spec:
        if key not in _CONTROL_KEYS:
            raise fail(f"{field}.{key}", f"unknown key {key!r}; expected {sorted(_CONTROL_KEYS)}")
    share = _share(spec.get("share"), f"{field}.share")
    salt = _salt(spec, field, CONTROL)
    arms = (Arm(CONTROL, "no_message", share), Arm(TREATED, "full", round(1.0 - share, 12)))
    before = previous.control
    if before is not None and before.salt != salt:
        before = None
    alloc = _allocation(spec, field, arms, before)
    return Experiment(CONTROL, salt, arms, CONTROL, _channels(spec, field, channels),
                      bytes(alloc), default_control=True)  # fmt: skip
