"""Training rows from an interaction-history export: what was offered, to whom, and what came of it.

``rtim export history`` writes one decision per row (``docs/history.md``):
the customer's profile as it was just before the decision
(``context.profile``, base64 of ``Profile.pack()``), the request
(``context.request``), the chosen offers and the outcomes attributed later.
Each chosen offer becomes one training row:

- **features**: built by the serving code path itself — the request's
  context facts (:func:`models.decisioning.arbitration.request_context`), the
  catalogue's candidate for (offer, channel, treatment) and
  :class:`~models.learning.features.FeatureBuilder` — so a model trained here
  sees exactly what it will be served;
- **label**: 1 when an outcome attributed to that offer (or, naming no offer,
  to the decision's first offer) is positive, else 0.

Rows without context (history context logging off), "no message" decisions
and offers the catalogue no longer has are skipped and counted. Files are
read as a stream (``.jsonl``, ``.jsonl.gz``, ``.parquet``); only the feature
matrix is kept.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.customer.profile import Profile
from models.decisioning.arbitration import request_context
from models.decisioning.catalog import Catalog
from models.decisioning.request import DecideRequest
from models.learning.features import FeatureBuilder
from models.learning.simulator import TrainingSet

# Fields of a history row that parquet may hold as JSON text.
_NESTED = ("channels", "candidates", "chosen", "context", "outcomes")


class HistoryError(ValueError):
    """The file is not an interaction-history export this reader understands."""


def read_history(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the rows of a history export (JSONL, gzipped JSONL or Parquet)."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        raise HistoryError(f"{path}:{n}: not a JSON object ({exc})") from None
    except OSError as exc:
        raise HistoryError(f"cannot read {path}: {exc}") from None


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the bulk extra brings it
        raise HistoryError("reading Parquet needs pyarrow (pip install 'rtim[bulk]')") from None
    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own types for bad files
        raise HistoryError(f"cannot read {path}: {exc}") from None
    for batch in reader.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            for key in _NESTED:
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
            yield row


@dataclass
class HistoryCounts:
    """What reading a history gave: rows, training rows, and what was skipped and why."""

    decisions: int = 0
    rows: int = 0
    positives: int = 0
    skipped: Counter = field(default_factory=Counter)


def _positive_offers(row: Mapping[str, Any]) -> set[str]:
    chosen = row.get("chosen") or []
    first = chosen[0]["offer_id"] if chosen else None
    out = set()
    for o in row.get("outcomes") or []:
        if o.get("positive"):
            offer = o.get("offer_id") or first
            if offer is not None:
                out.add(offer)
    return out


def training_rows(
    rows: Iterator[Mapping[str, Any]],
    catalog: Catalog,
    features: Sequence[Mapping[str, Any]],
    session_gap_s: float = 1800.0,
    counts: HistoryCounts | None = None,
) -> TrainingSet:
    """One training row per chosen offer of every decision that carries its context."""
    builder = FeatureBuilder(features)
    counts = counts if counts is not None else HistoryCounts()
    blocks: list[np.ndarray] = []
    labels: list[int] = []
    meta: list[tuple[str, str, str, float]] = []
    for row in rows:
        counts.decisions += 1
        ctx = row.get("context")
        if not ctx or not ctx.get("profile"):
            counts.skipped["no context"] += 1
            continue
        if not row.get("chosen"):
            counts.skipped["no message"] += 1
            continue
        if row.get("fallback"):
            counts.skipped["fallback"] += 1
            continue
        cid, ts = row["customer_id"], float(row["ts"])
        profile = Profile.unpack(cid, base64.b64decode(ctx["profile"]))
        req_data = ctx.get("request") or {}
        req = DecideRequest(
            cid,
            tuple(req_data.get("channels") or row.get("channels") or ()),
            req_data.get("placement"),
            dict(req_data.get("context") or {}),
        )
        base = request_context(req, ts, session_gap_s)
        positive = _positive_offers(row)
        for chosen in row["chosen"]:
            cand = _candidate(catalog, chosen, req.placement)
            if cand is None:
                counts.skipped["offer not in the catalogue"] += 1
                continue
            context = base if chosen["channel"] == base["channel"] else {
                **base, "channel": chosen["channel"]}  # fmt: skip
            blocks.append(builder.build(profile, context, [cand], ts))
            label = int(chosen["offer_id"] in positive)
            labels.append(label)
            counts.positives += label
            meta.append((cid, chosen["offer_id"], chosen["channel"], ts))
    counts.rows = len(labels)
    n = len(labels)
    X = np.concatenate(blocks) if blocks else np.zeros((0, builder.n_columns), np.float32)
    return TrainingSet(
        features=[dict(f) for f in features],
        columns=list(builder.columns),
        X=X,
        label=np.asarray(labels, dtype=np.int8),
        customer_id=np.asarray([m[0] for m in meta], dtype=object),
        offer_id=np.asarray([m[1] for m in meta], dtype=object),
        channel=np.asarray([m[2] for m in meta], dtype=object),
        segment=np.asarray([""] * n, dtype=object),
        ts=np.asarray([m[3] for m in meta], dtype=np.float64),
        p_true=np.full(n, np.nan, dtype=np.float32),
        source={"generator": "rtim export history", "catalog_version": catalog.version},
    )


def _candidate(catalog: Catalog, chosen: Mapping[str, Any], placement: str | None) -> Any:
    for cand in catalog.candidates(chosen["channel"], placement):
        if cand.offer_id == chosen["offer_id"] and cand.treatment_id == chosen["treatment"]:
            return cand
    for cand in catalog.candidates(chosen["channel"]):
        if cand.offer_id == chosen["offer_id"]:
            return cand
    return None
