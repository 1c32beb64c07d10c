"""The Ray Serve deployment: one replica = one :class:`Ingress` and its app.

Serve builds the ASGI app after the constructor (``__serve_build_asgi_app__``),
so each replica's app is made by :func:`serving.app.create_app` from its own
settings, with no module-level state; then the replica's start-up heap is
frozen (:mod:`actors.heap`).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from actors import heap
from models.settings import Settings, load_settings
from serving.app import create_app
from serving.ingress import Ingress


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=5,
)
@serve.ingress()
class IngressDeployment:
    """One stateless ingress replica."""

    def __init__(self, settings: dict) -> None:
        self.ingress = Ingress(Settings.from_dict(settings))

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.ingress)
        # Start-up is over: freeze its heap so full collections stop walking it
        # (actors/heap.py; measured 13 % of a replica's CPU per /noop request).
        heap.settle()
        return app


def build_app(settings: Settings) -> Any:
    """The Serve application for these settings (used by the CLI and the tests)."""
    return IngressDeployment.options(
        num_replicas=settings.ingress_replicas,
        # Let requests reach our own bound, which answers with a JSON 503.
        max_ongoing_requests=settings.max_inflight_per_replica + 64,
    ).bind(settings.to_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files (``serve build`` / ``serve deploy``).

    ``args`` are settings (the rows of the README's Configuration table), on
    top of an optional ``config`` YAML file, the ``RTIM_*`` environment and
    the defaults. The shards are created by the first replica that starts
    (the coordinator is found or created by name), so ``serve deploy`` on an
    existing cluster is enough.
    """
    args = dict(args or {})
    config = args.pop("config", None)
    return build_app(load_settings(config, args))
