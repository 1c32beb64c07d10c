"""``rtim keys``, ``rtim audit`` and the refusal to serve openly, run in-process."""

from __future__ import annotations

import json

import pytest

from models.access import KeyStore
from models.settings import Settings
from serving import server
from serving.cli import main


def test_keys_create_list_revoke_and_audit(tmp_path, capsys) -> None:
    d = str(tmp_path)
    assert main(["keys", "--data-dir", d, "create", "--name", "web-channel",
                 "--scopes", "decide,events:write", "--rps", "50"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1]
    assert KeyStore(d).load().authenticate(secret).name == "web-channel"
    assert main(["keys", "--data-dir", d, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "web-channel" and listed[0]["rps"] == 50.0
    assert secret not in json.dumps(listed)
    assert main(["keys", "--data-dir", d, "revoke", "web-channel"]) == 0
    assert KeyStore(d).load().authenticate(secret) is None
    assert main(["keys", "--data-dir", d, "revoke", "web-channel"]) == 2
    assert main(["keys", "--data-dir", d, "create", "--name", "x", "--scopes", "root"]) == 2
    capsys.readouterr()
    assert main(["audit", "--data-dir", d]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e["target"]) for e in lines] == [
        ("key.revoke", "web-channel"),
        ("key.create", "web-channel"),
    ]


def test_no_auth_beyond_loopback_refuses_to_start(tmp_path, capsys) -> None:
    args = ["serve", "--host", "0.0.0.0", "--no-auth", "--data-dir", str(tmp_path)]
    assert main(args) == 1
    assert "refusing" in capsys.readouterr().err
    assert not (tmp_path / "keys.json").exists()
    open_ = Settings(host="0.0.0.0", auth=False, data_dir=str(tmp_path))
    server.check_exposure(open_, insecure=True)  # the explicit opt-out
    server.check_exposure(Settings(host="127.0.0.1", auth=False))
    with pytest.raises(server.Exposed):
        server.check_exposure(open_)


def test_first_start_makes_a_private_admin_key_once(tmp_path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    path = server.ensure_local_admin_key(settings)
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    key = KeyStore(tmp_path).load().authenticate(path.read_text().strip())
    assert key is not None and key.allows("admin")
    assert server.ensure_local_admin_key(settings) is None
    assert server.ensure_local_admin_key(Settings(data_dir=str(tmp_path / "o"), auth=False)) is None
