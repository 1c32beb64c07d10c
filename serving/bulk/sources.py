"""Input files for an import: CSV, JSONL and Parquet, optionally gzipped, read as a stream.

:func:`open_source` checks a file up front (it exists, it is readable, it
decompresses, it has a header or schema) so a bad file fails before anything
is sent. :meth:`RowSource.rows` then yields one :class:`Row` at a time: a
file is never loaded whole (Parquet is read one record batch at a time).

A row's ``line`` is what a person looks up: the physical line where a CSV
record or JSONL object starts, or the 1-based row number in a Parquet file.
Its ``index`` (0-based, counting data rows only) is what the import
checkpoint records.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

FORMATS = ("csv", "jsonl", "parquet")
IDENTITY_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 4096


class SourceError(Exception):
    """A file that cannot be read: missing, unreadable, corrupt or of an unknown format."""


class Row(NamedTuple):
    """One data row: a dict of columns (or a whole event object), or why it is unreadable."""

    index: int
    line: int
    data: dict[str, Any] | None
    content: str  # what derived event ids hash
    error: str | None = None


def file_identity(path: Path) -> str:
    """A digest of the file's first MiB: the same file, moved or renamed, keeps it.

    Rows appended to a file keep the identity too, so a resumed import of a
    grown file continues where it stopped; derived event ids also hash each
    row's content, so an edited row is a new event.
    """
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        digest.update(f.read(IDENTITY_BYTES))
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the name (``.gz`` ignored)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in (
        (".csv", "csv"),
        (".tsv", "csv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
    ):
        if name.endswith(suffix):
            return fmt
    raise SourceError(
        f"{path}: unknown file type; name it .csv, .jsonl or .parquet "
        "(optionally .gz) or pass --format"
    )


class RowSource:
    """One input file, opened for streaming; see :func:`open_source`."""

    def __init__(self, path: Path, fmt: str, delimiter: str = ",") -> None:
        self.path = path
        self.format = fmt
        self.delimiter = delimiter
        self.size = path.stat().st_size
        self.identity = file_identity(path)
        self.header: list[str] | None = None
        self.total_rows: int | None = None  # known up front for Parquet only
        self._raw: BinaryIO | None = None
        self._rows_read = 0
        self._check()

    # -- up-front checks ---------------------------------------------------------

    def _check(self) -> None:
        if self.format == "parquet":
            pq = _parquet()
            try:
                meta = pq.ParquetFile(self.path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise SourceError(f"{self.path}: not a readable Parquet file ({exc})") from None
            self.header = list(meta.schema_arrow.names)
            self.total_rows = meta.metadata.num_rows
            return
        with self._text() as text:
            try:
                first = text.readline()
            except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                raise SourceError(f"{self.path}: cannot read ({exc})") from None
        if self.format == "csv":
            if not first.strip():
                raise SourceError(f"{self.path}: empty file (a CSV file needs a header line)")
            self.header = next(csv.reader([first], delimiter=self.delimiter))

    @contextmanager
    def _text(self) -> Iterator[io.TextIOWrapper]:
        """The file as text, gunzipped when it starts with the gzip magic bytes."""
        with self.path.open("rb") as raw:
            self._raw = raw
            stream: Any = raw
            if raw.read(2) == b"\x1f\x8b":
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            raw.seek(0)
            with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as text:
                yield text

    # -- streaming ---------------------------------------------------------------

    def fraction(self) -> float:
        """How far through the file the reader is (0..1), for progress and ETA."""
        if self.total_rows:
            return self._rows_read / self.total_rows
        if self._raw is None or self._raw.closed or not self.size:
            return 0.0
        return min(1.0, self._raw.tell() / self.size)

    def rows(self, skip_below: int = 0) -> Iterator[Row]:
        """Every data row in order; rows with ``index < skip_below`` are counted, not built."""
        try:
            if self.format == "csv":
                yield from self._csv_rows(skip_below)
            elif self.format == "jsonl":
                yield from self._jsonl_rows(skip_below)
            else:
                yield from self._parquet_rows(skip_below)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(
                f"{self.path}: read failed after {self._rows_read} rows ({exc})"
            ) from None

    def _csv_rows(self, skip_below: int) -> Iterator[Row]:
        with self._text() as text:
            reader = csv.reader(text, delimiter=self.delimiter)
            header = next(reader)
            width = len(header)
            last_line = reader.line_num
            index = 0
            for values in reader:
                line, last_line = last_line + 1, reader.line_num
                if not values:
                    continue  # blank line
                self._rows_read += 1
                if index >= skip_below:
                    content = "\x1f".join(values)
                    if len(values) != width:
                        yield Row(
                            index,
                            line,
                            None,
                            content,
                            f"row has {len(values)} fields, the header has {width}",
                        )
                    else:
                        yield Row(index, line, dict(zip(header, values)), content)
                index += 1

    def _jsonl_rows(self, skip_below: int) -> Iterator[Row]:
        with self._text() as text:
            index = 0
            for line_no, text_line in enumerate(text, 1):
                stripped = text_line.strip()
                if not stripped:
                    continue
                self._rows_read += 1
                if index >= skip_below:
                    try:
                        data = json.loads(stripped)
                    except ValueError as exc:
                        yield Row(index, line_no, None, stripped, f"not valid JSON: {exc}")
                    else:
                        if isinstance(data, dict):
                            yield Row(index, line_no, data, stripped)
                        else:
                            yield Row(index, line_no, None, stripped, "each line must be an object")
                index += 1

    def _parquet_rows(self, skip_below: int) -> Iterator[Row]:
        pq = _parquet()
        index = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            if index + batch.num_rows <= skip_below:
                index += batch.num_rows
                self._rows_read += batch.num_rows
                continue
            for data in batch.to_pylist():
                self._rows_read += 1
                if index >= skip_below:
                    yield Row(index, index + 1, data, repr(tuple(data.values())))
                index += 1


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(
            "reading Parquet needs pyarrow: pip install 'rtim[bulk]' (make install does)"
        ) from None
    return pq


def open_source(path: str | Path, fmt: str | None = None, delimiter: str = ",") -> RowSource:
    """Check one input file and return its streaming reader; raise :class:`SourceError`."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file")
    if not p.is_file():
        raise SourceError(f"{p}: not a regular file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise SourceError(f"{p}: cannot open ({exc.strerror})") from None
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if p.name.lower().removesuffix(".gz").endswith(".tsv"):
        delimiter = "\t"
    return RowSource(p, fmt, delimiter)
