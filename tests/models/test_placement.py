"""Shard placement over nodes: the node with the most room, and spread plans that end."""

from __future__ import annotations

from collections import Counter

import pytest

from models.placement import most_room, spread_plan


def test_a_new_shard_goes_to_the_node_with_the_fewest_shards_per_cpu() -> None:
    nodes = {"a": 2.0, "b": 1.0, "c": 1.0}
    assert most_room(nodes, ["a", "a", "b"]) == "c"
    assert most_room(nodes, ["a", "b", "c"]) == "a"  # 2 CPUs: room for a second one
    assert most_room(nodes, ["gone", "gone"]) == "a"  # shards on a lost node do not count


def test_no_live_node_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no live node"):
        most_room({}, [])


def test_shards_spread_onto_a_node_that_joined() -> None:
    before = {0: "a", 1: "a", 2: "b", 3: "b"}
    plan = spread_plan(before, {"a": 1.0, "b": 1.0, "c": 1.0})
    after = {**before, **dict(plan)}
    assert len(plan) == 1 and plan[0][1] == "c"
    assert sorted(Counter(after.values()).values()) == [1, 1, 2]


def test_a_balanced_layout_needs_no_relocation() -> None:
    assert spread_plan({0: "a", 1: "b"}, {"a": 1.0, "b": 1.0}) == []


def test_draining_moves_every_shard_off_the_node_and_only_those_if_balanced() -> None:
    before = {0: "a", 1: "b", 2: "c", 3: "c"}
    plan = spread_plan(before, {"a": 1.0, "b": 1.0, "c": 1.0}, frozenset({"c"}))
    after = {**before, **dict(plan)}
    assert "c" not in after.values()
    assert sorted(s for s, _ in plan) == [2, 3]
    assert Counter(after.values()) == {"a": 2, "b": 2}


def test_shards_on_a_lost_node_are_placed_and_draining_the_last_node_is_refused() -> None:
    assert spread_plan({0: "gone"}, {"a": 1.0}) == [(0, "a")]
    with pytest.raises(ValueError, match="no node left"):
        spread_plan({0: "a"}, {"a": 1.0}, frozenset({"a"}))
