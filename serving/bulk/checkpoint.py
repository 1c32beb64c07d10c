"""The import checkpoint: which rows of which files are done, so ``--resume`` skips them.

A row is *done* once the server acknowledged the batch that carried it, or
once it went to the rejects file. Batches are acknowledged out of order (they
travel concurrently), so per file the checkpoint keeps a watermark (every row
below ``done_below`` is done) plus the few done rows above it. That set is
bounded by the rows in flight (lanes × batch size × 2).

On resume, the rows that were sent but not acknowledged when the import died
are sent again with the same derived event ids; the server answers them as
duplicates if it had applied them (each profile remembers its last 32 event
ids for 24 hours). So a resumed import counts every row exactly once provided
the resume happens within 24 hours and no customer has more than 32 events in
the rows that were in flight at the crash — far beyond what one batch holds
for typical data. The checkpoint, not the server's memory, covers every
acknowledged row, however old.

The file is rewritten atomically (write, then rename) after every
acknowledgement, together with the summary counters and the length of the
rejects file at that moment, so a resumed run's counters and rejects file
continue exactly where the checkpoint left them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.atomic_file import replace_file

VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that does not match the files being imported, or cannot be read."""


@dataclass
class FileProgress:
    """The done rows of one input file."""

    path: str
    identity: str
    done_below: int = 0
    done_above: set[int] = field(default_factory=set)
    complete: bool = False

    def mark(self, index: int) -> None:
        if index >= self.done_below:
            self.done_above.add(index)
        above = self.done_above
        while self.done_below in above:
            above.discard(self.done_below)
            self.done_below += 1

    def is_done(self, index: int) -> bool:
        return index < self.done_below or index in self.done_above

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "identity": self.identity,
            "done_below": self.done_below,
            "done_above": sorted(self.done_above),
            "complete": self.complete,
        }


@dataclass
class ImportCheckpoint:
    """Every file's progress, the summary counters and the rejects file's length."""

    path: Path
    files: dict[str, FileProgress] = field(default_factory=dict)  # identity -> progress
    counters: dict[str, int] = field(default_factory=dict)
    rejects_bytes: int = 0

    @classmethod
    def load(cls, path: Path) -> ImportCheckpoint:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"no checkpoint at {path}: nothing to resume (run without --resume)"
            ) from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise CheckpointError(f"{path} is not an rtim import checkpoint (version {VERSION})")
        files = {
            f["identity"]: FileProgress(
                f["path"], f["identity"], f["done_below"], set(f["done_above"]), f["complete"]
            )
            for f in raw["files"]
        }
        return cls(path, files, dict(raw["counters"]), int(raw["rejects_bytes"]))

    def file(self, path: str, identity: str) -> FileProgress:
        """The progress of one file (new files start at row 0)."""
        if identity not in self.files:
            self.files[identity] = FileProgress(path, identity)
        return self.files[identity]

    def check_files(self, identities: dict[str, str]) -> None:
        """Refuse to resume over a different set of files (``identities``: path -> identity)."""
        known = set(self.files)
        given = set(identities.values())
        if not known <= given:
            lost = [f.path for i, f in self.files.items() if i not in given]
            raise CheckpointError(
                f"the checkpoint {self.path} is for other files (or they changed): "
                f"{', '.join(lost)}; run without --resume to start over"
            )

    def encode(self) -> bytes:
        """The file's content for the state at this moment."""
        data = {
            "version": VERSION,
            "files": [f.to_dict() for f in self.files.values()],
            "counters": self.counters,
            "rejects_bytes": self.rejects_bytes,
        }
        return json.dumps(data).encode()

    def write(self, content: bytes) -> None:
        """Replace the file with ``content`` (from :meth:`encode`) atomically."""
        # Fsynced: a resume after a power cut must not skip rows the server never got.
        replace_file(self.path, content)

    def save(self) -> None:
        self.write(self.encode())
