"""A small, bounded run of the learning benchmark's world, in process (no server)."""

from __future__ import annotations

from loadtest.learning import ACTIONS, World, oracle_action, play_in_process, report, true_value


def test_oracle_sends_nothing_to_customers_who_buy_anyway() -> None:
    assert oracle_action("retired", "north") == ("none", "")
    assert all(true_value(a, "retired", r) <= 0 for a in ACTIONS for r in ("north", "east"))
    assert oracle_action("student", "north") != ("none", "")


def test_adaptive_uplift_policy_beats_every_baseline_after_one_block() -> None:
    """Three seeds (a single run varies by ±0.1): decisions 2000..4000 of each."""
    seconds = []
    for seed in (3, 4, 5):
        world = World.make(customers=800, decisions=4000, seed=seed)
        result = report(world, play_in_process(world, seed=seed), seed=seed, mode="in-process")
        second = {k: v[1] for k, v in result["blocks"].items()}
        for baseline in ("random", "best_constant", "context_free_ts"):
            assert second["adaptive"] > second[baseline] + 0.1, result
        seconds.append(second["adaptive"])
    assert sum(seconds) / len(seconds) > 0.75, seconds


def test_learner_seed_moves_the_policy_not_the_world() -> None:
    """The spread the README reports: same customers and outcomes, another Thompson stream."""
    world = World.make(customers=300, decisions=600, seed=6)
    same = play_in_process(world, seed=6)
    assert play_in_process(world, seed=6) == same  # seeded: a rerun is identical
    other = play_in_process(world, seed=6, learner_seed=100)
    assert other != same
    base = report(world, same, seed=6, mode="in-process")
    moved = report(world, other, seed=6, mode="in-process")
    assert base["oracle_value"] == moved["oracle_value"]
    assert base["blocks"]["context_free_ts"] == moved["blocks"]["context_free_ts"]
