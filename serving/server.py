"""Start and stop the whole server: Ray, the shards and the Serve app.

Used by ``rtim serve`` and by the test suite's session fixture, so tests run
the same start-up path as ``make serve``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import ray
from ray import serve

from actors.coordinator import COORDINATOR_NAME, get_or_create_coordinator
from actors.identity import identity_name
from actors.shard import NAMESPACE, shard_name
from models.settings import Settings
from serving.app import build_app

log = logging.getLogger("rtim.server")

APP_NAME = "rtim"


@dataclass
class Runtime:
    """A running server: what :func:`stop` needs to tear it down."""

    settings: Settings
    url: str
    shards: int
    owns_ray: bool


def _ray_env(settings: Settings) -> dict[str, str]:
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1" if settings.ingress_mode == "haproxy" else "0"}
    # Serve's request logs cost more than a decision; keep them off by default.
    env["RAY_SERVE_LOG_TO_STDERR"] = os.environ.get("RAY_SERVE_LOG_TO_STDERR", "0")
    return env


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process."""


def check_port_free(host: str, port: int) -> None:
    """Fail early: Serve's proxy binds with SO_REUSEPORT and would share the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def start(settings: Settings, address: str | None = None, num_cpus: int | None = None) -> Runtime:
    """Start (or join) Ray, create the shards and deploy the HTTP app."""
    started = time.monotonic()
    owns_ray = False
    if not address:
        check_port_free(settings.host, settings.port)
    if not ray.is_initialized():
        env = _ray_env(settings)
        os.environ.update(env)  # an embedded Ray's processes inherit this
        kwargs: dict = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": True}
        if address:
            kwargs["address"] = address
            kwargs["runtime_env"] = {"env_vars": env}
        else:
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            owns_ray = True
        ray.init(**kwargs)
    serve.start(
        http_options={"host": settings.host, "port": settings.port},
    )
    coordinator = get_or_create_coordinator(settings)
    pings = ray.get(coordinator.wait_ready.remote(), timeout=120)
    serve.run(
        build_app(settings),
        name=APP_NAME,
        route_prefix="/",
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    url = f"http://{settings.host}:{settings.port}"
    log.info("server up in %.1fs with %d shards", time.monotonic() - started, len(pings))
    return Runtime(settings, url, len(pings), owns_ray)


def stop(runtime: Runtime) -> None:
    """Delete the app and the shards; shut Ray down if we started it."""
    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # already gone: nothing to stop
        log.debug("serve.delete: %s", exc)
    names = [COORDINATOR_NAME, *(shard_name(i) for i in range(runtime.shards))]
    names += [identity_name(i) for i in range(runtime.shards)]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
    if runtime.owns_ray:
        serve.shutdown()
        ray.shutdown()
