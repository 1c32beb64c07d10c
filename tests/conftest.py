"""Shared fixtures: one real local Ray + Serve server for the whole session.

The server is started through :func:`serving.server.start`, the same path as
``make serve``, on a free loopback port with a temporary data directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from models.settings import DEMO_DIR, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tests_support

import tests_support  # noqa: E402
from tests_support import free_port  # noqa: E402


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("rtim-data")
    # The suite's key, made before start-up as `rtim keys create` would.
    from models.access import KeyStore

    _, tests_support.ADMIN_KEY = KeyStore(data).create("tests", "admin")
    # `rtim import/campaign/export/scale` run by tests send it (serving/credentials.py).
    os.environ["RTIM_API_KEY"] = tests_support.ADMIN_KEY
    # A private copy of the bundled registry, so tests can add model versions.
    registry = tmp_path_factory.mktemp("rtim-models") / "registry"
    shutil.copytree(DEMO_DIR / "registry", registry)
    return load_settings(
        None,
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "shards": 2,
            "partitions": 64,
            # Two ingress replicas with their own caches: every test runs
            # against both (tests_support.replica_urls addresses each).
            "ingress_replicas": 2,
            "data_dir": str(data),
            "max_batch_events": 500,
            "max_body_bytes": 256 * 1024,
            "model_registry": str(registry),
            "max_inflight_per_shard": 16,
            "max_inflight_per_replica": 200,
            "client_timeout_s": 10,
        },
    )


@pytest.fixture(scope="session")
def server(server_settings: Settings) -> Iterator[str]:
    from serving import server as srv

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    runtime = srv.start(server_settings, num_cpus=2)
    try:
        yield runtime.url
    finally:
        srv.stop(runtime)


@pytest.fixture(scope="session")
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server, timeout=30.0, headers=tests_support.auth_headers()
    ) as c:
        yield c
