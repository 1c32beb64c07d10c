"""Replacing a file on disk so that a crash leaves the old or the new content, never a mix.

The bytes go to a temporary file in the same directory, are fsynced, renamed
over the target, and the directory is fsynced so the rename itself survives
a power cut. Used for state written whole: the coordinator's map, the key
table, journal snapshots, import checkpoints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Durably replace ``path`` with ``data`` (``mode``: permissions, e.g. 0o600)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
