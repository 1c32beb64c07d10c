"""Replacing a file whole: old or new content, never a mix, no temporary files left."""

from __future__ import annotations

import stat

import pytest

from models.atomic_file import replace_file


def test_replace_file_swaps_the_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state" / "map.json"
    replace_file(target, b"old")
    replace_file(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["map.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "keys.json"
    replace_file(target, b"old")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]
