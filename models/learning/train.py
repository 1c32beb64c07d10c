"""Training a propensity model and publishing it as a registry version.

This is the only module that needs the ``train`` extra (scikit-learn,
skl2onnx, onnx); the server never imports it. One command rebuilds the bundled
demo model from a seeded simulation::

    python -m models.learning.train --simulate 10000 --seed 7 \
        --out models/demo/registry --version v1

or trains on a file written by :mod:`models.learning.simulator`::

    python -m models.learning.train --data var/train.jsonl --out models/demo/registry --version v2

or on what the server logged (``rtim export history``; rows built by
:mod:`models.learning.history_training` through the serving code path)::

    python -m models.learning.train --history var/history.jsonl --catalog catalog.yaml \
        --features-from models/demo/registry/v1 --out var/registry --version v2

Steps: split the rows by customer (a stable hash, so no customer is in both
parts), fit a scikit-learn classifier, score the holdout (AUC, log loss,
expected calibration error and, for simulated data, agreement with the known
ground truth), convert to ONNX with a plain ``probabilities`` output, write
``model.onnx`` + ``manifest.json`` and load the result back through
:class:`~models.learning.registry.ModelRegistry` to prove it serves.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.decisioning.catalog import load_catalog
from models.errors import RtimError
from models.learning.features import FeatureBuilder
from models.learning.history_training import (
    HistoryCounts,
    HistoryError,
    read_history,
    training_rows,
)
from models.learning.registry import ModelRegistry, read_manifest, write_model_version
from models.learning.scoring import OnnxScorer, PropensityScorer
from models.learning.simulator import (
    CHANNELS,
    DAY,
    OFFERS,
    SEGMENTS,
    START,
    TrainingSet,
    decision_context,
    ground_truth_table,
    neutral_profile,
    offer_candidate,
    read_training_set,
    simulate,
    write_training_set,
)

ESTIMATORS = ("gbt", "logreg")
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def holdout_mask(customer_ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for rows whose customer falls in the holdout (stable across runs)."""

    def bucket(customer_id: str) -> int:
        digest = hashlib.blake2b(customer_id.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % 10_000

    buckets = np.fromiter(map(bucket, customer_ids.tolist()), dtype=np.int64)
    return buckets < int(fraction * 10_000)


def make_estimator(kind: str = "gbt", seed: int = 7) -> ClassifierMixin:
    """A small classifier: boosted trees (learns interactions) or scaled logistic.

    Boosted trees are scikit-learn's ``GradientBoostingClassifier``: skl2onnx
    1.20 cannot convert ``HistGradientBoostingClassifier`` with onnx 1.23 (it
    writes Python bools into an ints attribute).
    """
    if kind == "gbt":
        # Few, shallow trees keep model.onnx well under 200 KB and a decision's
        # ONNX run in the tens of microseconds.
        return GradientBoostingClassifier(
            n_estimators=200,
            max_depth=3,
            learning_rate=0.1,
            subsample=0.8,
            min_samples_leaf=20,
            validation_fraction=0.15,
            n_iter_no_change=10,
            random_state=seed,
        )
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    raise ValueError(f"estimator must be one of {ESTIMATORS}")


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over equal-count bins, weighted by bin size."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return total / max(len(p), 1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (no ties expected in continuous scores)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(p: np.ndarray, data: TrainingSet) -> dict[str, Any]:
    """Holdout metrics of predictions ``p`` for the rows of ``data``."""
    y = data.label.astype(int)
    out: dict[str, Any] = {
        "rows": len(y),
        "positives_rate": round(float(y.mean()), 5),
        "auc": round(float(roc_auc_score(y, p)), 4),
        "logloss": round(float(log_loss(y, p, labels=[0, 1])), 5),
        "ece": round(expected_calibration_error(p, y), 5),
        "mean_predicted": round(float(p.mean()), 5),
    }
    if np.isfinite(data.p_true).all() and len(y):
        out["ground_truth"] = ground_truth_agreement(p, data)
    return out


def ground_truth_agreement(p: np.ndarray, data: TrainingSet) -> dict[str, Any]:
    """How well holdout predictions ``p`` recover the simulator's known propensities.

    ``pearson``: per row against the true probability. ``cell_spearman``: mean
    prediction against mean truth per segment × offer × channel cell (cells
    with 30+ rows). ``oracle_auc``: the AUC the true probabilities themselves
    reach, the ceiling for ``auc``.
    """
    truth = data.p_true.astype(float)
    pred_cells, true_cells = [], []
    for seg in SEGMENTS:
        for offer in OFFERS:
            for ch in CHANNELS:
                m = (data.segment == seg) & (data.offer_id == offer) & (data.channel == ch)
                if m.sum() >= 30:
                    pred_cells.append(p[m].mean())
                    true_cells.append(truth[m].mean())
    out = {
        "pearson": round(float(np.corrcoef(p, truth)[0, 1]), 4),
        "oracle_auc": round(float(roc_auc_score(data.label, truth)), 4),
        "cells": len(pred_cells),
    }
    if len(pred_cells) >= 3:
        out["cell_spearman"] = round(
            rank_correlation(np.array(pred_cells), np.array(true_cells)), 4
        )
    return out


def table_agreement(scorer: PropensityScorer) -> dict[str, Any]:
    """Score a neutral customer of each segment for every offer on every channel,
    through the serving path, and compare with :func:`ground_truth_table`.

    ``spearman``: over all segment × offer × channel cells. ``offer_rank``:
    mean Spearman of the seven offers' order per segment and channel (does
    the model rank offers as the truth does?). ``top_offer``: share of
    segment × channel pairs whose best offer the model picks.
    """
    table = ground_truth_table()
    pred = np.zeros_like(table)
    now = START + 14 * DAY + 12 * 3600.0
    for s, seg in enumerate(SEGMENTS):
        profile = neutral_profile(seg, START)
        for c, ch in enumerate(CHANNELS):
            cands = [offer_candidate(o, ch) for o in OFFERS]
            X = scorer.features(profile, decision_context(ch, now), cands, now)
            pred[s, :, c] = scorer.predict(X)
    pairs = [(s, c) for s in range(len(SEGMENTS)) for c in range(len(CHANNELS))]
    return {
        "spearman": round(rank_correlation(pred.ravel(), table.ravel()), 4),
        "offer_rank": round(
            float(np.mean([rank_correlation(pred[s, :, c], table[s, :, c]) for s, c in pairs])),
            4,
        ),
        "top_offer": round(
            float(np.mean([pred[s, :, c].argmax() == table[s, :, c].argmax() for s, c in pairs])),
            4,
        ),
    }


def to_onnx(estimator: ClassifierMixin, n_columns: int) -> bytes:
    """ONNX bytes with one float32 input ``features`` and a plain probability tensor."""
    model = convert_sklearn(
        estimator,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_columns]))],
        # zipmap off: the output is a [n, 2] tensor, not a list of dicts.
        options={id(estimator): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    names = [o.name for o in model.graph.output]
    if OUTPUT_NAME not in names:
        raise RuntimeError(f"converted model has outputs {names}, expected {OUTPUT_NAME!r}")
    # skl2onnx names the graph with a random uuid and lists opsets in set
    # order; fixing both keeps the file byte-for-byte reproducible.
    model.graph.name = "rtim_propensity"
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    model.producer_name = "rtim models.learning.train"
    model.doc_string = ""
    return model.SerializeToString()


def _steps(estimator: Any) -> list[Any]:
    return [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]


def _params(estimator: ClassifierMixin) -> dict[str, Any]:
    """The estimator's JSON-friendly hyper-parameters (last step of a pipeline)."""
    params = _steps(estimator)[-1].get_params(deep=False)
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))}


def train(
    data: TrainingSet,
    out: str | Path,
    version: str,
    estimator: str = "gbt",
    holdout: float = 0.2,
    seed: int = 7,
    log: Log = _stderr,
) -> Path:
    """Fit, evaluate, convert and write ``<out>/<version>/``; return that directory."""
    if len(data) < 100 or data.label.sum() < 10:
        positives = int(data.label.sum())
        raise ValueError(f"too little data to train: {len(data)} rows, {positives} positives")
    test = holdout_mask(data.customer_id, holdout)
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    log(f"training {estimator} on {len(train_idx)} rows, holding out {len(test_idx)}")
    started = time.perf_counter()
    model = make_estimator(estimator, seed)
    model.fit(data.X[train_idx], data.label[train_idx])
    log(f"  fitted in {time.perf_counter() - started:.1f}s")
    p_test = model.predict_proba(data.X[test_idx])[:, 1]
    metrics: dict[str, Any] = {"holdout": evaluate(p_test, _subset(data, test_idx))}
    log(f"  holdout: {_fmt(metrics['holdout'])}")
    blob = to_onnx(model, data.X.shape[1])
    # Score through the serving class before publishing: the numbers below are
    # what the server will compute, not what scikit-learn computes.
    scorer = OnnxScorer(blob, FeatureBuilder(data.features), version=version)
    diff = float(np.abs(scorer.predict(data.X[test_idx]) - p_test).max())
    metrics["onnx_max_abs_diff"] = diff
    log(f"  ONNX model: {len(blob) / 1024:.1f} KB, max |ONNX - scikit-learn| {diff:.1e}")
    if data.source.get("generator") == "models.learning.simulator":
        metrics["ground_truth_table"] = table_agreement(scorer)
        log(f"  against the ground-truth table: {metrics['ground_truth_table']}")
    manifest = {
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {
            "type": "+".join(type(step).__name__ for step in _steps(model)),
            "params": _params(model),
            "trees": getattr(_steps(model)[-1], "n_estimators_", None),
            "trained_with": {
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__,
            },
            "opsets": {
                o.domain or "ai.onnx": o.version for o in onnx.load_from_string(blob).opset_import
            },
        },
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, data.X.shape[1]]},
        "output": {"name": OUTPUT_NAME, "format": "probabilities", "positive": 1},
        "features": data.features,
        "columns": data.columns,
        "training": {
            **data.summary(),
            "train_rows": len(train_idx),
            "holdout_rows": len(test_idx),
            "holdout_split": f"by customer, blake2b(customer_id) fraction {holdout}",
        },
        "metrics": metrics,
    }
    directory = write_model_version(out, version, blob, manifest)
    ModelRegistry(out).load(version)  # the written version must load as the server loads it
    log(f"  wrote {directory}")
    return directory


def _subset(data: TrainingSet, idx: np.ndarray) -> TrainingSet:
    return TrainingSet(
        data.features, data.columns, data.X[idx], data.label[idx], data.customer_id[idx],
        data.offer_id[idx], data.channel[idx], data.segment[idx], data.ts[idx],
        data.p_true[idx], data.source,
    )  # fmt: skip


def _fmt(metrics: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)]
    gt = metrics.get("ground_truth")
    if gt:
        parts.append("truth: " + " ".join(f"{k}={v}" for k, v in gt.items()))
    return " ".join(parts)


def _history_training_set(path: str, catalog: str | None, features_from: str) -> TrainingSet:
    if not catalog:
        raise SystemExit("--history needs --catalog (the catalogue the logged offers come from)")
    try:
        features = read_manifest(features_from)["features"]
        counts = HistoryCounts()
        data = training_rows(read_history(path), load_catalog(catalog), features, counts=counts)
    except (HistoryError, RtimError, OSError, KeyError) as exc:
        raise SystemExit(f"cannot train from {path}: {exc}") from None
    skipped = ", ".join(f"{n} {why}" for why, n in counts.skipped.most_common()) or "none"
    _stderr(f"read {counts.decisions} decisions from {path}: {counts.rows} training rows "
            f"({counts.positives} positive); skipped: {skipped}")  # fmt: skip
    return data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m models.learning.train",
        description="Train a propensity model into a registry.",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="training file from models.learning.simulator (.jsonl or .csv)")
    src.add_argument("--simulate", type=int, metavar="N", help="simulate N customers first")
    src.add_argument("--history", help="an `rtim export history` file (.jsonl[.gz], .parquet)")
    ap.add_argument("--catalog", help="with --history: the catalogue the offers come from")
    ap.add_argument(
        "--features-from",
        default=str(Path(__file__).resolve().parents[1] / "demo" / "registry" / "v1"),
        help="with --history: a model version directory whose manifest lists the features",
    )
    ap.add_argument("--seed", type=int, default=7, help="simulation and training seed")
    ap.add_argument("--days", type=int, default=28, help="simulated days (with --simulate)")
    ap.add_argument("--save-data", help="also write the simulated rows to this file")
    ap.add_argument("--out", required=True, help="registry root, e.g. models/demo/registry")
    ap.add_argument("--version", required=True, help="version directory name, e.g. v1")
    ap.add_argument("--estimator", choices=ESTIMATORS, default="gbt")
    ap.add_argument("--holdout", type=float, default=0.2)
    args = ap.parse_args(argv)
    if args.simulate:
        _stderr(f"simulating {args.simulate} customers, seed {args.seed}")
        data = simulate(
            args.simulate, args.seed, args.days,
            progress=lambda d, t, r: _stderr(f"  simulated {d}/{t} customers, {r} decisions"),
        ).training  # fmt: skip
        if args.save_data:
            write_training_set(data, args.save_data)
            _stderr(f"  wrote {args.save_data}")
    elif args.history:
        data = _history_training_set(args.history, args.catalog, args.features_from)
    else:
        data = read_training_set(args.data)
        _stderr(f"read {len(data)} rows from {args.data}")
    train(data, args.out, args.version, args.estimator, args.holdout, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
