"""The simulated bank: deterministic, a known ground truth, valid events and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.customer.events import parse_event_batch
from models.customer.profile import Profile
from models.learning.simulator import (
    CHANNELS,
    OFFERS,
    SEGMENTS,
    START,
    ground_truth_table,
    main,
    neutral_profile,
    read_training_set,
    simulate,
    true_propensity,
    write_training_set,
)


def test_same_seed_same_world_other_seed_other_world() -> None:
    a, b = simulate(25, seed=3, keep_events=True), simulate(25, seed=3, keep_events=True)
    np.testing.assert_array_equal(a.training.X, b.training.X)
    np.testing.assert_array_equal(a.training.label, b.training.label)
    assert a.events == b.events
    c = simulate(25, seed=4)
    assert len(c.training) != len(a.training) or not np.array_equal(c.training.X, a.training.X)


def test_a_customer_does_not_depend_on_how_many_are_simulated() -> None:
    small, large = simulate(5, seed=3).training, simulate(12, seed=3).training
    np.testing.assert_array_equal(large.X[: len(small)], small.X)


def test_ground_truth_table_covers_segments_offers_channels() -> None:
    table = ground_truth_table()
    assert table.shape == (len(SEGMENTS), len(OFFERS), len(CHANNELS)) == (4, 7, 7)
    assert ((table > 0) & (table < 0.5)).all()
    s, o, c = SEGMENTS.index("affluent"), OFFERS.index("premium_account"), CHANNELS.index("branch")
    assert table[s, o, c] > table[SEGMENTS.index("young"), o, c]


def test_true_propensity_is_the_table_for_a_neutral_customer_and_moves_with_behaviour() -> None:
    table = ground_truth_table()
    now = START + 86400
    p = neutral_profile("family")
    for o, offer in enumerate(OFFERS):
        for c, channel in enumerate(CHANNELS):
            assert true_propensity(p, offer, channel, now) == pytest.approx(table[1, o, c])
    holder = neutral_profile("family")
    holder.holdings.append("credit_card")
    assert true_propensity(holder, "credit_card", "web", now) < table[1, 0, 0] / 5
    unhappy = neutral_profile("family")
    unhappy.last["complaint"] = now - 3600
    retention = OFFERS.index("retention_offer")
    assert true_propensity(unhappy, "retention_offer", "web", now) > 2 * table[1, retention, 0]


def test_labels_follow_the_true_propensities() -> None:
    data = simulate(400, seed=5).training
    assert data.X.shape == (len(data), len(data.columns)) and data.X.dtype == np.float32
    assert abs(data.label.mean() - data.p_true.mean()) < 0.01
    high = data.p_true > np.quantile(data.p_true, 0.8)
    assert data.label[high].mean() > 2 * data.label[~high].mean()
    assert set(data.offer_id) == set(OFFERS) and set(data.segment) == set(SEGMENTS)


def test_events_are_valid_v1_events() -> None:
    sim = simulate(10, seed=2, keep_events=True)
    assert {"profile_update", "page_view", "impression", "response"} <= {
        e["type"] for e in sim.events
    }
    assert all(e["customer_id"].startswith("cust-") and "event_id" in e for e in sim.events)
    parsed = parse_event_batch({"events": sim.events}, max_batch=10**6, now=START + 90 * 86400)
    assert len(parsed) == len(sim.events)
    assert len({e["event_id"] for e in sim.events}) == len(sim.events)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_training_file_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    data = simulate(20, seed=9).training
    back = read_training_set(write_training_set(data, tmp_path / f"rows{suffix}"))
    np.testing.assert_array_equal(back.X, data.X)
    np.testing.assert_array_equal(back.label, data.label)
    assert back.features == data.features and back.columns == data.columns
    assert back.offer_id.tolist() == data.offer_id.tolist()
    assert back.customer_id.tolist() == data.customer_id.tolist()
    np.testing.assert_allclose(back.p_true, data.p_true, rtol=1e-5)
    assert back.source["seed"] == 9


def test_command_line_writes_training_and_event_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, events = tmp_path / "train.jsonl", tmp_path / "events.jsonl"
    args = ["--customers", "8", "--seed", "1", "--out", str(out), "--events-out", str(events)]
    assert main(args) == 0
    assert len(read_training_set(out)) > 0
    assert events.read_text().count("\n") > 8
    assert "simulated 8/8 customers" in capsys.readouterr().err


def test_profiles_replay_to_the_same_state_the_simulator_saw() -> None:
    sim = simulate(1, seed=4, keep_events=True)
    p = Profile("cust-000000")
    for ev in parse_event_batch({"events": sim.events}, 10**6, now=START + 90 * 86400):
        p.apply(ev, ev.ts, 1800.0)
    assert p.attrs["segment"] in SEGMENTS
    assert len([h for h in p.history if h[3] == "impression"]) == len(sim.training)
