"""The idealised learners of loadtest/learning_ideal.py run and report sane fractions."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.learning import World
from loadtest.learning_ideal import SERVER_PRIOR, Learner, greedy, learners, main, play


def test_every_learner_reports_a_fraction_of_the_oracle(tmp_path: Path) -> None:
    out = tmp_path / "ideal.json"
    args = ["--decisions", "1000", "--seeds", "7", "--learner-seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == len(learners())
    for row in data["rows"]:
        assert len(row["runs"]) == 2
        assert all(-1.0 < x <= 1.0 + 1e-9 for x in row["runs"]), row
    assert data["best"]["mean"] == max(r["mean"] for r in data["rows"])


def test_a_deterministic_learner_ignores_its_seed_and_the_world_seed_matters() -> None:
    learner = Learner("greedy", "segment", SERVER_PRIOR, greedy)
    world = World.make(500, 1000, 7)
    assert play(world, learner, 7, 0) == play(world, learner, 7, 1)
    assert play(world, learner, 7, 0) != play(World.make(500, 1000, 8), learner, 8, 0)
