"""Customer segments: a rule over profile facts that picks the customers of a campaign.

A segment rule is a condition of the catalogue's rule language
(:mod:`models.decisioning.rules`), e.g. ``{fact: attr.age, op: ">=", value: 40}``
or ``{all: [...]}``, over profile facts only (offer and group facts need a
candidate and are refused). It is written as YAML or JSON text on the command
line, compiled once, and evaluated next to the data, in each shard
(:func:`segment_page`).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import yaml

from models.customer.profile import Profile
from models.customer.store import ProfileStore
from models.decisioning.rules import compile_condition
from models.errors import CatalogError, ValidationError

SegmentTest = Callable[[Any, float], bool]  # (profile, now) -> member?
MAX_PAGE = 10_000


def parse_segment_rule(text: str) -> dict[str, Any]:
    """The condition written as YAML/JSON text; ValidationError if it does not parse."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"segment rule is not valid YAML/JSON: {exc}", "segment") from None
    if not isinstance(spec, dict):
        raise ValidationError(
            "segment rule must be a condition such as "
            + json.dumps({"fact": "attr.age", "op": ">=", "value": 40}),
            "segment",
        )
    compile_segment(spec)
    return spec


def compile_segment(spec: Any) -> SegmentTest:
    """Compile a segment condition (None: every customer); ValidationError naming what is wrong."""
    if spec is None:
        return lambda profile, now: True
    try:
        condition = compile_condition(spec, "segment")
    except CatalogError as exc:
        raise ValidationError(exc.message, exc.field or "segment") from None
    if condition.per_candidate:
        raise ValidationError(
            "segment rules read profile facts only (no offer.* or group.* facts)", "segment"
        )
    test = condition.test
    return lambda profile, now: test(profile, {}, None, now)


def reads_attributes_only(spec: Any) -> bool:
    """True when every fact of the (valid) condition ``spec`` is an ``attr.*`` fact."""
    if spec is None:
        return True
    if isinstance(spec, dict) and "fact" in spec:
        return str(spec["fact"]).startswith("attr.")
    if isinstance(spec, dict) and len(spec) == 1:
        (body,) = spec.values()
        parts = body if isinstance(body, list) else [body]
        return all(reads_attributes_only(part) for part in parts)
    return False


def segment_page(
    store: ProfileStore,
    test: SegmentTest,
    after: str | None,
    limit: int,
    now: float,
    attributes_only: bool = False,
) -> tuple[list[str], str | None]:
    """Up to ``limit`` member ids after ``after`` in id order, and the cursor for the next page.

    Each call sorts the store's ids (O(n log n)); that keeps pages stable while
    profiles come and go, at a cost that is small next to deciding for them.
    ``attributes_only`` (the rule reads ``attr.*`` facts alone, see
    :func:`reads_attributes_only`): test each profile's attributes without
    unpacking the rest of it.
    """
    ids = sorted(store.ids())
    start = 0
    if after is not None:
        start = bisect_right(ids, after)
    members: list[str] = []
    last = None
    head = Profile.unpack_attrs
    for cid in ids[start:]:
        last = cid
        if attributes_only:
            blob = store.blob(cid)
            profile = None if blob is None else head(cid, blob)
        else:
            profile = store.get(cid)
        if profile is not None and test(profile, now):
            members.append(cid)
            if len(members) >= limit:
                break
    exhausted = last is None or last == ids[-1]
    return members, None if exhausted else last
