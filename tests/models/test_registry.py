"""The model registry: version folders, manifest checks, the bundled demo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.customer.profile import Profile
from models.errors import ModelError, NotFound
from models.learning.features import FeatureBuilder
from models.learning.registry import (
    DEMO_REGISTRY,
    MANIFEST_FORMAT,
    ModelRegistry,
    read_manifest,
    write_model_version,
)
from models.learning.simulator import CHANNELS, OFFERS, decision_context, offer_candidate

NOW = 1_750_000_000.0
FEATURES = [
    {"name": "attr.age", "kind": "numeric", "default": 40},
    {"name": "offer.id", "kind": "onehot", "values": ["a", "b", "c"]},
]


def manifest(**overrides: object) -> dict:
    base = {
        "created_at": "2025-01-01T00:00:00Z",
        "input": {"name": "features", "dtype": "float32", "shape": [None, 4]},
        "output": {"name": "probabilities", "format": "probabilities", "positive": 1},
        "features": FEATURES,
        "columns": list(FeatureBuilder(FEATURES).columns),
        "training": {"rows": 0},
        "metrics": {},
    }
    base.update(overrides)
    return base


def sklearn_model(width: int = 4, seed: int = 0) -> bytes:
    """A tiny logistic regression converted the way models.learning.train converts."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from models.learning.train import to_onnx

    rng = np.random.default_rng(seed)
    X = rng.random((200, width)).astype(np.float32)
    y = (X[:, 0] + rng.random(200) > 1.0).astype(int)
    return to_onnx(LogisticRegression().fit(X, y), width)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return sklearn_model()


def test_versions_sort_naturally_and_latest_is_highest(tmp_path: Path, model_bytes: bytes) -> None:
    for v in ("v2", "v10", "v1"):
        write_model_version(tmp_path, v, model_bytes, manifest())
    (tmp_path / "v11").mkdir()  # no manifest: a version still being written
    registry = ModelRegistry(tmp_path)
    assert registry.versions() == ["v1", "v2", "v10"]
    assert registry.latest().version == "v10"
    written = read_manifest(tmp_path / "v1")
    assert written["format"] == MANIFEST_FORMAT and written["version"] == "v1"
    assert len(written["model"]["sha256"]) == 64


def test_a_model_narrower_than_its_manifest_is_refused(tmp_path: Path) -> None:
    write_model_version(tmp_path, "v1", sklearn_model(width=3), manifest(input={}))
    with pytest.raises(ModelError, match=r"model v1: .*3 features wide .* lists 4"):
        ModelRegistry(tmp_path).load("v1")


@pytest.mark.parametrize(
    ("change", "message", "field"),
    [
        ({"input": {"name": "x"}}, "input is 'features', the manifest says 'x'", "input.name"),
        ({"input": {"shape": [None, 9]}}, "disagrees with the 4 feature columns", "input.shape"),
        ({"output": {"name": "scores"}}, "no output 'scores'", "output.name"),
        ({"columns": ["attr.age"]}, "was the encoding changed", "columns"),
        ({"features": [{"name": "nope"}]}, "unknown fact", "features[0].name"),
        ({"format": "other/1"}, "manifest format", "format"),
        ({"version": "v2"}, "does not match its directory", "version"),
    ],
)
def test_manifest_mismatches_are_refused(
    tmp_path: Path, model_bytes: bytes, change: dict, message: str, field: str
) -> None:
    directory = write_model_version(tmp_path, "v1", model_bytes, manifest())
    doc = read_manifest(directory)
    for key, value in change.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    (directory / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=message) as err:
        ModelRegistry(tmp_path).load("v1")
    assert err.value.field == field


def test_a_model_file_changed_after_publishing_is_refused(
    tmp_path: Path, model_bytes: bytes
) -> None:
    directory = write_model_version(tmp_path, "v1", model_bytes, manifest())
    (directory / "model.onnx").write_bytes(sklearn_model(seed=1))
    with pytest.raises(ModelError, match="sha256"):
        ModelRegistry(tmp_path).load("v1")


def test_unknown_and_unsafe_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(NotFound):
        registry.load("v9")
    with pytest.raises(NotFound):
        registry.latest()
    with pytest.raises(ModelError, match="bad model version"):
        registry.load("../etc")
    with pytest.raises(ModelError, match="not a directory"):
        ModelRegistry(tmp_path / "missing")


def test_bundled_demo_model_scores_every_demo_offer() -> None:
    registry = ModelRegistry()
    assert registry.root == DEMO_REGISTRY and "v1" in registry.versions()
    scorer = registry.load("v1")
    info = registry.manifest("v1")
    assert (DEMO_REGISTRY / "v1" / "model.onnx").stat().st_size < 200_000
    assert info["metrics"]["holdout"]["auc"] > 0.7
    assert info["training"]["rows"] > 10_000
    profile = Profile("c1", attrs={"segment": "affluent", "age": 50, "income": 120_000})
    for channel in CHANNELS:
        cands = [offer_candidate(o, channel) for o in OFFERS]
        X = scorer.features(profile, decision_context(channel, NOW), cands, NOW)
        p = scorer.predict(X)
        assert X.shape == (7, len(scorer.columns)) and p.shape == (7,)
        assert np.all((p > 0) & (p < 1))
