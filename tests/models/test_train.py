"""Training: a small simulated set gives a loadable model that recovers the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from models.learning.registry import ModelRegistry, read_manifest
from models.learning.simulator import TrainingSet, simulate, write_training_set
from models.learning.train import (
    expected_calibration_error,
    holdout_mask,
    main,
    rank_correlation,
    train,
)


@pytest.fixture(scope="module")
def data() -> TrainingSet:
    return simulate(1200, seed=21).training


@pytest.fixture(scope="module")
def trained(data: TrainingSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    train(data, root, "v1", log=lambda msg: None)
    return root


def test_trained_model_loads_and_beats_chance_on_the_holdout(trained: Path) -> None:
    info = read_manifest(trained / "v1")
    holdout = info["metrics"]["holdout"]
    assert holdout["auc"] > 0.65  # the true propensities reach about 0.81 on this set
    assert holdout["ece"] < 0.03
    assert info["metrics"]["onnx_max_abs_diff"] < 1e-4
    assert (trained / "v1" / "model.onnx").stat().st_size < 200_000
    assert info["training"]["rows"] > 10_000 and 0 < info["training"]["positives_rate"] < 0.2
    assert info["training"]["date_range"][0].startswith("2025-01-06")
    assert ModelRegistry(trained).latest().version == "v1"


def test_trained_model_recovers_the_simulators_ground_truth(trained: Path) -> None:
    metrics = read_manifest(trained / "v1")["metrics"]
    truth = metrics["holdout"]["ground_truth"]
    assert truth["pearson"] > 0.6
    assert truth["cell_spearman"] > 0.5
    # Few rows per cell at this size: the bundled 10,000-customer model does better.
    assert metrics["ground_truth_table"]["spearman"] > 0.2
    assert metrics["ground_truth_table"]["offer_rank"] > 0.3


def test_served_scores_match_training_rows(trained: Path, data: TrainingSet) -> None:
    scorer = ModelRegistry(trained).load("v1")
    p = scorer.predict(data.X[:500])
    assert ((p >= 0) & (p <= 1)).all()
    assert np.corrcoef(p, data.p_true[:500])[0, 1] > 0.5


def test_command_line_trains_from_a_file(
    data: TrainingSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_training_set(data, tmp_path / "rows.csv")
    args = ["--data", str(path), "--out", str(tmp_path / "reg"), "--version", "lr1"]
    assert main([*args, "--estimator", "logreg"]) == 0
    assert ModelRegistry(tmp_path / "reg").load("lr1").version == "lr1"
    assert "holdout: rows=" in capsys.readouterr().err


def test_holdout_split_is_by_customer_and_stable() -> None:
    ids = np.array([f"cust-{i % 50:06d}" for i in range(1000)])
    mask = holdout_mask(ids, 0.2)
    assert (mask == holdout_mask(ids, 0.2)).all()
    for cid in set(ids.tolist()):
        assert len(set(mask[ids == cid].tolist())) == 1
    assert 0.05 < mask.mean() < 0.4


def test_metric_helpers() -> None:
    y = np.array([0, 0, 1, 1])
    assert expected_calibration_error(np.array([0.0, 0.0, 1.0, 1.0]), y, bins=2) == 0.0
    assert rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])) == 0.5
