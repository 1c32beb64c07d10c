"""API keys, token buckets, the audit log and the YAML bounds, without a server."""

from __future__ import annotations

import json
import os

import pytest

from models.access import KeyStore, KeyTable, parse_scopes
from models.audit import AuditLog, pseudonym
from models.errors import ValidationError
from models.rate import TokenBucket
from models.safe_yaml import YamlRefused, load_bounded_yaml


def test_key_is_stored_hashed_and_checked(tmp_path) -> None:
    store = KeyStore(tmp_path)
    key, secret = store.create("web", "decide,events:write")
    text = store.path.read_text()
    assert secret not in text and secret.split("_", 2)[2] not in text
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    table = store.load()
    assert table.authenticate(secret) == key
    assert table.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert table.authenticate("") is None and table.authenticate("rtim_x_y") is None
    assert key.allows("decide") and not key.allows("admin") and not key.allows("profiles:read")


def test_admin_scope_allows_everything(tmp_path) -> None:
    key, _ = KeyStore(tmp_path).create("ops", "admin")
    assert all(key.allows(s) for s in ("decide", "profiles:erase", "reports:read"))


def test_revoked_key_no_longer_authenticates_but_is_listed(tmp_path) -> None:
    store = KeyStore(tmp_path)
    _, secret = store.create("web", "decide")
    store.revoke("web")
    table = store.load()
    assert table.authenticate(secret) is None
    assert table.keys[0].public()["revoked"] is not None
    assert "digest" not in table.keys[0].public()
    with pytest.raises(ValidationError):
        store.revoke("web")
    _, again = store.create("web", "decide")  # the name is free again
    assert store.load().authenticate(again) is not None


@pytest.mark.parametrize("scopes", ["", "decide,root", "everything"])
def test_unknown_scopes_are_refused(scopes: str) -> None:
    with pytest.raises(ValidationError):
        parse_scopes(scopes)


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "../k", "k\n"])
def test_bad_key_names_are_refused(tmp_path, name: str) -> None:
    with pytest.raises(ValidationError):
        KeyStore(tmp_path).create(name, "decide")


def test_duplicate_live_name_is_refused(tmp_path) -> None:
    store = KeyStore(tmp_path)
    store.create("web", "decide")
    with pytest.raises(ValidationError):
        store.create("web", "decide")


def test_key_table_round_trips(tmp_path) -> None:
    store = KeyStore(tmp_path)
    store.create("a", "decide", rps=5, burst=10)
    data = json.loads(store.path.read_text())
    table = KeyTable.from_dict(data)
    assert (table.keys[0].rps, table.keys[0].burst) == (5.0, 10)


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    t = bucket.stamp
    assert [bucket.take(t) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take(t)
    assert wait == pytest.approx(0.5)
    assert bucket.take(t + 0.5) == 0.0
    assert bucket.take(t + 100) == 0.0 and bucket.tokens <= 3


def test_audit_log_appends_and_reads_newest_first(tmp_path) -> None:
    log = AuditLog(tmp_path)
    for i in range(5):
        log.append("ops", "catalog.replace", f"v{i}", "ok")
    log.append("ops", "profile.erase", pseudonym("c-1"), "erased")
    with open(log.path, "ab") as fh:
        fh.write(b'{"torn')  # a crash mid-write leaves a partial last line
    entries = log.tail(3)
    assert [e["target"] for e in entries] == [pseudonym("c-1"), "v4", "v3"]
    assert [e["target"] for e in log.tail(10, "catalog.replace")][:2] == ["v4", "v3"]
    assert "c-1" not in log.path.read_text()
    assert os.stat(log.path).st_mode & 0o777 == 0o600


def test_bounded_yaml_refuses_aliases_depth_nodes_and_tags() -> None:
    assert load_bounded_yaml("a: [1, {b: 2}]") == {"a": [1, {"b": 2}]}
    with pytest.raises(YamlRefused, match="aliases"):
        load_bounded_yaml("a: &x [1]\nb: *x\n")
    with pytest.raises(YamlRefused, match="deeper"):
        load_bounded_yaml("[" * 100 + "]" * 100)
    with pytest.raises(YamlRefused, match="nodes"):
        load_bounded_yaml("[" + ", ".join(["1"] * 50) + "]", max_nodes=20)
    import yaml

    with pytest.raises(yaml.YAMLError):
        load_bounded_yaml("!!python/object/apply:os.getcwd []")
