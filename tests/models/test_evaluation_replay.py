"""Replaying a candidate catalogue/model on RTIM history rows, and reading logs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from models.decisioning.catalog import load_catalog
from models.evaluation.estimators import BanditLog, EvaluationSettings, evaluate
from models.evaluation.logs import LogError, read_log
from models.evaluation.replay import NO_MESSAGE, CandidatePolicy
from models.evaluation.simulated import simulated_history, true_value
from models.learning.registry import ModelRegistry
from models.learning.scoring import PriorScorer
from models.settings import DEMO_DIR

CATALOG = load_catalog(DEMO_DIR / "catalog.yaml")


@pytest.fixture(scope="module")
def model():
    return ModelRegistry().load("v1")


@pytest.mark.parametrize("seed", [1, 2])
def test_new_model_is_estimated_within_its_interval_on_simulated_history(seed, model) -> None:
    # Logged by the catalogue with prior scores, exploring 30 % of the time;
    # the candidate is the same catalogue with the trained model.
    rows = list(simulated_history(1500, CATALOG, PriorScorer(), 0.3, seed=seed))
    truth = true_value(rows, CandidatePolicy(CATALOG, model))
    policy = CandidatePolicy(CATALOG, model)
    log = BanditLog()
    assert all(policy.add_row(log, r, f"row {i}") is None for i, r in enumerate(rows))
    result = evaluate(log, EvaluationSettings(bootstrap=200, seed=seed))
    for name in ("ips", "dr"):
        e = result.by_name(name)
        assert e.ci_low <= truth <= e.ci_high, (name, e, truth)
    # The candidate really differs from the logging policy's greedy answers.
    assert len(policy.actions) > 3 and result.by_name("ips").ess < 1500


def test_candidate_choice_is_the_real_arbitration_on_the_logged_profile(model) -> None:
    row = next(simulated_history(1, CATALOG, PriorScorer(), 1.0, seed=5))
    policy = CandidatePolicy(CATALOG, model)
    action = policy.choose(row, "row 1")
    # The same context decided again gives the same answer: replay is deterministic.
    assert action == policy.choose(copy.deepcopy(row), "row 1")
    assert action == NO_MESSAGE or action.split("@")[0] in CATALOG.offers
    # A catalogue whose threshold nothing reaches says nothing, on the same row.
    raw = yaml.safe_load((DEMO_DIR / "catalog.yaml").read_text())
    raw["arbitration"]["min_priority"] = 1e9
    assert CandidatePolicy(load_catalog(raw), model).choose(row, "row 1") == NO_MESSAGE


def test_rows_without_context_fallbacks_and_slates_are_skipped_and_counted(tmp_path) -> None:
    rows = list(simulated_history(6, CATALOG, PriorScorer(), 0.5, seed=3))
    rows[0]["context"] = None
    rows[1]["fallback"] = True
    rows[2]["chosen"] = [dict(offer_id="a", channel="web", treatment="t", probability=0.5)] * 2
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = CandidatePolicy(CATALOG, PriorScorer())
    log, skipped, kind = read_log(path, policy.add_row)
    assert kind == "history" and len(log) == 3
    assert skipped == {"no_context": 1, "fallback": 1, "slate": 1}


def test_history_parquet_with_json_string_columns_reads_like_jsonl(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = list(simulated_history(20, CATALOG, PriorScorer(), 0.5, seed=4))
    flat = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
            for r in rows]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "h.parquet")
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {}
    for name in ("h.parquet", "h.jsonl"):
        log, skipped, _ = read_log(tmp_path / name, CandidatePolicy(CATALOG, PriorScorer()).add_row)
        got[name] = (evaluate(log, EvaluationSettings(bootstrap=0)).by_name("ips").value, skipped)
    assert got["h.parquet"] == got["h.jsonl"]


def test_minimal_log_is_read_and_bad_rows_are_named(tmp_path) -> None:
    good = [
        {"context": {"segment": "young"}, "action": "a", "reward": 1, "logged_probability": 0.5,
         "target_probabilities": {"a": 1.0}},
        {"context": {"segment": "old"}, "action": "b", "reward": 0, "logged_probability": 0.5,
         "target_probabilities": {"a": 0.5, "b": 0.5}},
    ]  # fmt: skip
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    log, skipped, kind = read_log(path)
    assert kind == "minimal" and len(log) == 2 and skipped == {}
    assert evaluate(log, EvaluationSettings(bootstrap=0)).by_name("ips").value == 1.0
    for bad, field in [
        ({**good[0], "reward": "yes"}, "row 2.reward"),
        ({**good[0], "logged_probability": 1.5}, "row 2.logged_probability"),
        ({**good[0], "target_probabilities": {"a": 0.8, "b": 0.8}}, "row 2.target_probabilities"),
        ({k: v for k, v in good[0].items() if k != "action"}, "row 2.action"),
    ]:
        path.write_text(json.dumps(good[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(LogError) as info:
            read_log(path)
        assert info.value.field == field


def test_history_without_a_candidate_policy_is_refused(tmp_path: Path) -> None:
    row = next(simulated_history(1, CATALOG, PriorScorer(), 0.5, seed=1))
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(LogError, match="--policy"):
        read_log(path)


def test_damaged_profile_blob_is_a_log_error_naming_the_field() -> None:
    row = next(simulated_history(1, CATALOG, PriorScorer(), 0.5, seed=1))
    row["context"]["profile"] = "bm90IG1zZ3BhY2s="  # base64 of "not msgpack"
    with pytest.raises(LogError) as info:
        CandidatePolicy(CATALOG, PriorScorer()).add_row(BanditLog(), row, "row 7")
    assert info.value.field == "row 7.context.profile"
