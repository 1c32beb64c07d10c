"""Every operation asks for a key, except the few that must stay public.

A new router that forgets ``require(...)`` would be open to anyone who
reaches the port; this test walks the real app's OpenAPI document (which
lists each operation's security requirement) and fails first.
"""

from __future__ import annotations

from models.settings import load_settings
from serving.app import create_app
from serving.ingress import Ingress

PUBLIC = {"/healthz", "/readyz"}


def test_every_operation_but_health_and_readiness_requires_a_key(tmp_path) -> None:
    settings = load_settings(None, {"data_dir": str(tmp_path)})
    doc = create_app(Ingress(settings, metrics=False)).openapi()
    operations = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]
    assert len(operations) > 15
    open_ops = sorted(f"{m.upper()} {p}" for p, m, op in operations
                      if p not in PUBLIC and not op.get("security"))  # fmt: skip
    assert open_ops == []
    assert all(not op.get("security") for p, _, op in operations if p in PUBLIC)
