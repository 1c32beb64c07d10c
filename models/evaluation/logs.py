"""Reading bandit logs for off-policy evaluation, streaming, into a :class:`BanditLog`.

Two row formats, in JSONL (one object a line) or parquet (the same columns;
object-valued columns may also be JSON strings):

- **RTIM history** (``rtim export history``; the interaction-history row of
  ``docs/evaluation.md``): rows with ``decision_id`` and ``chosen``. The
  candidate policy's probabilities come from re-running the arbitration on
  the logged context (:class:`~models.evaluation.replay.CandidatePolicy`).
- **Minimal bandit log** (from any system), one decision a row::

      {"context": {...} | null, "action": "offer-a", "reward": 1.0,
       "logged_probability": 0.25 | null,
       "target_probabilities": {"offer-a": 0.9, "offer-b": 0.1},
       "stratum": "optional string for the reward model"}

  ``target_probabilities`` is the candidate policy's distribution over the
  actions in this context (actions it would never take may be left out).

:func:`read_log` decides the format from the first row, checks every row and
raises :class:`LogError` naming the file, row and field at fault.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.errors import ValidationError
from models.evaluation.estimators import BanditLog

HISTORY_OBJECT_FIELDS = ("channels", "candidates", "chosen", "context", "outcomes")
MINIMAL_FIELDS = ("action", "reward", "logged_probability", "target_probabilities")
REWARDS = ("positive", "value")


class LogError(ValidationError):
    """A log file that cannot be read or has a bad row; ``field`` names the row and field."""

    code = "invalid_log"


def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any], float]]:
    """``(row number from 1, row, fraction of the file read)`` for a JSONL (``.gz`` too)
    or parquet file."""
    p = Path(path)
    if not p.is_file():
        raise LogError(f"{p}: no such file")
    if p.suffix == ".parquet":
        yield from _parquet_rows(p)
        return
    size = max(p.stat().st_size, 1)
    raw = p.open("rb")
    f = gzip.GzipFile(fileobj=raw) if p.suffix == ".gz" else raw
    with raw, f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise LogError(f"{p}: row {number} is not JSON ({exc})", f"row {number}") from None
            if not isinstance(row, dict):
                raise LogError(f"{p}: row {number} is not a JSON object", f"row {number}")
            yield number, row, raw.tell() / size


def _parquet_rows(p: Path) -> Iterator[tuple[int, dict[str, Any], float]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LogError("reading parquet needs pyarrow: pip install 'rtim[bulk]'") from None
    try:
        f = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise LogError(f"{p}: not a readable parquet file ({exc})") from None
    total = max(f.metadata.num_rows, 1)
    number = 0
    for batch in f.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            number += 1
            yield number, row, number / total


def _json_field(row: dict[str, Any], key: str) -> Any:
    """A field that may arrive as a JSON string (parquet columns of objects)."""
    value = row.get(key)
    if isinstance(value, str) and key != "action":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _probability(value: Any, where: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        raise LogError(f"{where} must be a probability from 0 to 1", where)
    return float(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LogError(f"{where} must be a finite number", where)
    return float(value)


def add_minimal_row(log: BanditLog, row: dict[str, Any], where: str) -> None:
    """Check one minimal-format row and add it."""
    for key in MINIMAL_FIELDS[:2] + MINIMAL_FIELDS[3:]:
        if key not in row:
            raise LogError(f"{where}: {key} is required", f"{where}.{key}")
    action = row["action"]
    if not isinstance(action, str) or not action:
        raise LogError(f"{where}.action must be a non-empty string", f"{where}.action")
    reward = _number(row["reward"], f"{where}.reward")
    mu = _probability(row.get("logged_probability"), f"{where}.logged_probability", True)
    target = _json_field(row, "target_probabilities")
    if not isinstance(target, dict):
        raise LogError(
            f"{where}.target_probabilities must be an object of action -> probability",
            f"{where}.target_probabilities",
        )
    probs = {
        str(a): _probability(p, f"{where}.target_probabilities.{a}") for a, p in target.items()
    }
    if sum(probs.values()) > 1.0 + 1e-6:  # type: ignore[arg-type]
        raise LogError(
            f"{where}.target_probabilities add up to more than 1", f"{where}.target_probabilities"
        )
    stratum = row.get("stratum")
    if stratum is None:
        context = _json_field(row, "context")
        stratum = "" if context is None else json.dumps(context, sort_keys=True, default=str)
    log.add(action, reward, mu, probs, str(stratum))  # type: ignore[arg-type]


def is_history_row(row: dict[str, Any]) -> bool:
    return "decision_id" in row and "chosen" in row


def read_log(
    path: str | os.PathLike[str],
    history_row: Callable[[BanditLog, dict[str, Any], str], str | None] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[BanditLog, dict[str, int], str]:
    """Read ``path`` into a log: ``(log, skipped rows by reason, format)``.

    ``history_row(log, row, where)`` adds an RTIM history row (or returns why
    it skipped it); without it, a history file is refused. ``progress(rows,
    fraction)`` is called after every row.
    """
    log = BanditLog()
    skipped: dict[str, int] = {}
    kind = ""
    rows = 0
    for number, row, fraction in iter_rows(path):
        where = f"row {number}"
        if not kind:
            kind = "history" if is_history_row(row) else "minimal"
            if kind == "history" and history_row is None:
                raise LogError(
                    f"{path} is an RTIM history export: give the candidate policy (--policy)"
                )
        if kind == "history":
            if not is_history_row(row):
                raise LogError(f"{where}: not an RTIM history row (no decision_id/chosen)", where)
            for key in HISTORY_OBJECT_FIELDS:
                row[key] = _json_field(row, key)
            reason = history_row(log, row, where)  # type: ignore[misc]
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
        else:
            add_minimal_row(log, row, where)
        rows += 1
        if progress is not None:
            progress(rows, fraction)
    if not rows:
        raise LogError(f"{path} holds no rows")
    return log, skipped, kind
