"""The audit trail: an append-only JSON-lines file, ``<data_dir>/audit.jsonl``.

Who (the key's name), what (action and target), when, and the result of
every catalogue change, model activation, key change, snapshot and erasure.
Each entry is one ``write`` on a file opened for appending, then fsync'd,
so entries from several replicas and the CLI never interleave and an
acknowledged change is on disk. Erasures are recorded by a hash of the
customer id, never the id or any profile data.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.jsonl"
MAX_READ = 1000


def pseudonym(customer_id: str) -> str:
    """A stable stand-in for an erased customer's id (sha256, first 16 hex digits)."""
    return "sha256:" + hashlib.sha256(customer_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class AuditLog:
    """Append and read the audit entries of one data directory."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / AUDIT_FILE

    def append(self, who: str, action: str, target: Any, result: str, **detail: Any) -> dict:
        entry = {"ts": round(time.time(), 3), "who": who, "action": action,
                 "target": target, "result": result, **detail}  # fmt: skip
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def tail(self, limit: int = 100, action: str | None = None) -> list[dict]:
        """The newest ``limit`` entries (of ``action``, if given), newest first."""
        limit = max(1, min(limit, MAX_READ))
        kept: collections.deque[dict] = collections.deque(maxlen=limit)
        try:
            with open(self.path, "rb") as fh:
                for raw in fh:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue  # a torn last line after a crash
                    if action is None or entry.get("action") == action:
                        kept.append(entry)
        except FileNotFoundError:
            return []
        return list(reversed(kept))
