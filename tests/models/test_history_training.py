"""Training a propensity model from an interaction-history export, through the serving path."""

from __future__ import annotations

import base64
import gzip
import json
import random
import time

import numpy as np
import pytest

from models.customer.profile import Profile
from models.decisioning.catalog import load_catalog
from models.learning.features import FeatureBuilder
from models.learning.history_training import (
    HistoryCounts,
    HistoryError,
    read_history,
    training_rows,
)
from models.learning.registry import ModelRegistry, read_manifest
from models.learning.train import main as train_main

DEMO = "models/demo/catalog.yaml"
DEMO_MODEL = "models/demo/registry/v1"
T0 = 1_790_000_000.0


def history_row(i: int, rng: random.Random) -> dict:
    """A decision: a credit card by email; the young accept it far more often."""
    age = rng.randint(20, 80)
    p = Profile(f"h-{i}")
    p.attrs = {"age": age, "income": 40_000 + 500 * (i % 50), "segment": "mass"}
    accepted = rng.random() < (0.5 if age < 35 else 0.05)
    ts = T0 + i
    return {
        "decision_id": f"d{i}", "customer_id": p.customer_id, "ts": ts,
        "channels": ["email"], "catalog_version": "demo", "model_version": "v1",
        "experiment": None, "arm": None, "policy": "full", "fallback": False,
        "candidates": [],
        "chosen": [{"offer_id": "credit_card", "channel": "email", "treatment": "cc_email",
                    "probability": 1.0, "propensity": 0.1, "value": 120.0}],
        "probability": 1.0,
        "context": {"profile": base64.b64encode(p.pack()).decode(),
                    "request": {"channels": ["email"], "context": {}, "limit": 1,
                                "placement": None}},
        "outcomes": [{"offer_id": None, "outcome": "accepted" if accepted else "rejected",
                      "ts": ts + 60, "positive": accepted, "value": None}],
    }  # fmt: skip


def write_history(path, n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    rows = [history_row(i, rng) for i in range(n)]
    rows.append({**rows[0], "decision_id": "none", "chosen": []})  # no message
    rows.append({**rows[1], "decision_id": "blind", "context": None})  # no context
    with gzip.open(path, "wt") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return rows


def test_rows_are_built_by_the_serving_feature_path_with_labels_from_outcomes(tmp_path):
    path = tmp_path / "history.jsonl.gz"
    rows = write_history(path, 50)
    catalog = load_catalog(DEMO)
    features = read_manifest(DEMO_MODEL)["features"]
    counts = HistoryCounts()
    data = training_rows(read_history(path), catalog, features, counts=counts)
    assert (counts.decisions, counts.rows) == (52, 50)
    assert dict(counts.skipped) == {"no message": 1, "no context": 1}
    assert data.label.tolist() == [int(r["outcomes"][0]["positive"]) for r in rows[:50]]
    # Row 7 is exactly what the server's feature builder makes of that profile.
    r = rows[7]
    p = Profile.unpack(r["customer_id"], base64.b64decode(r["context"]["profile"]))
    cand = next(c for c in catalog.candidates("email") if c.treatment_id == "cc_email")
    ctx = {"device": None, "hour": 0, "weekday": 0, "channel": "email", "channels": ("email",),
           "placement": None, "_session_gap_s": 1800.0}  # fmt: skip
    t = time.gmtime(r["ts"])
    ctx.update(hour=t.tm_hour, weekday=t.tm_wday)
    expected = FeatureBuilder(features).build(p, ctx, [cand], r["ts"])
    np.testing.assert_array_equal(data.X[7], expected[0])


def test_train_from_history_writes_a_version_that_serves_and_ranks_the_young_higher(tmp_path):
    path = tmp_path / "history.jsonl.gz"
    write_history(path, 1500)
    code = train_main(["--history", str(path), "--catalog", DEMO, "--out", str(tmp_path / "reg"),
                       "--version", "h1", "--estimator", "logreg"])  # fmt: skip
    assert code == 0
    manifest = read_manifest(tmp_path / "reg" / "h1")
    assert manifest["metrics"]["holdout"]["auc"] > 0.7
    assert manifest["training"]["source"]["generator"] == "rtim export history"
    scorer = ModelRegistry(tmp_path / "reg").load("h1")
    assert scorer.version == "h1"


def test_a_file_that_is_not_a_history_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(HistoryError, match=r"bad\.jsonl:1"):
        list(read_history(bad))
    with pytest.raises(SystemExit, match="needs --catalog"):
        train_main(["--history", str(bad), "--out", str(tmp_path / "r"), "--version", "x"])
