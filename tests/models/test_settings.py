"""Settings: defaults, YAML file, environment, validation."""

from __future__ import annotations

import pytest

from models.settings import SettingsError, load_settings


def test_defaults() -> None:
    s = load_settings(None, {})
    assert (s.host, s.port, s.partitions) == ("127.0.0.1", 8000, 256)


def test_file_then_env_then_overrides(tmp_path, monkeypatch) -> None:
    f = tmp_path / "rtim.yaml"
    f.write_text("port: 9000\nshards: 3\nsession_gap_s: 600\n")
    monkeypatch.setenv("RTIM_SHARDS", "5")
    s = load_settings(str(f), {"port": 9100})
    assert (s.port, s.shards, s.session_gap_s) == (9100, 5, 600.0)


@pytest.mark.parametrize(
    ("text", "word"),
    [("nope: 1\n", "nope"), ("port: abc\n", "port"), ("port: 0\n", "port"),
     ("shards: -1\n", "shards"), ("- a\n", "mapping"), ("ingress_mode: x\n", "ingress_mode")],
)  # fmt: skip
def test_bad_settings_name_the_setting(tmp_path, monkeypatch, text, word) -> None:
    monkeypatch.delenv("RTIM_SHARDS", raising=False)
    f = tmp_path / "rtim.yaml"
    f.write_text(text)
    with pytest.raises(SettingsError, match=word):
        load_settings(str(f), {})
