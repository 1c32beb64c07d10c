"""Import sources stream CSV, JSONL and Parquet (gzip too) and refuse bad files up front."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from serving.bulk.checkpoint import FileProgress
from serving.bulk.sources import SourceError, open_source


def test_csv_rows_carry_their_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('customer_id,type,note\nc1,page_view,"two\nlines"\n\nc2,complaint,x\nc3\n')
    rows = list(open_source(path).rows())
    assert [(r.index, r.line) for r in rows] == [(0, 2), (1, 5), (2, 6)]
    assert rows[0].data == {"customer_id": "c1", "type": "page_view", "note": "two\nlines"}
    assert rows[2].data is None and "1 fields, the header has 3" in (rows[2].error or "")


def test_gzipped_jsonl_streams_and_bad_lines_are_rows_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"customer_id": "c1", "type": "page_view"}\nnot json\n[1]\n')
    rows = list(open_source(path).rows())
    assert rows[0].data == {"customer_id": "c1", "type": "page_view"}
    assert rows[1].line == 2 and "not valid JSON" in (rows[1].error or "")
    assert rows[2].error == "each line must be an object"


def test_parquet_rows_and_schema(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"customer_id": ["a", "b"], "age": [30, 40]}), path)
    src = open_source(path)
    assert src.header == ["customer_id", "age"] and src.total_rows == 2
    rows = list(src.rows(skip_below=1))
    assert [(r.index, r.line, r.data) for r in rows] == [(1, 2, {"customer_id": "b", "age": 40})]


def test_unreadable_files_fail_before_reading_rows(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "missing.csv")
    bad_gz = tmp_path / "bad.csv.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(SourceError, match="cannot read"):
        open_source(bad_gz)
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        open_source(bad_pq)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty file"):
        open_source(empty)
    sheet = tmp_path / "x.xlsx"
    sheet.write_text("a")
    with pytest.raises(SourceError, match="unknown file type"):
        open_source(sheet)


def test_file_identity_survives_a_rename(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("customer_id,type\nc1,page_view\n")
    identity = open_source(a).identity
    b = a.rename(tmp_path / "b.csv")
    assert open_source(b).identity == identity


def test_checkpoint_watermark_advances_over_out_of_order_acknowledgements() -> None:
    fp = FileProgress("f", "id")
    for index in (2, 3, 0):
        fp.mark(index)
    assert fp.done_below == 1 and fp.done_above == {2, 3}
    fp.mark(1)
    assert fp.done_below == 4 and not fp.done_above
    assert fp.is_done(3) and not fp.is_done(4)
