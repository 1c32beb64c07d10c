"""``GET /noop`` as fast as locust's FastHttpUser can send it.

Used by ``bench --client-cost`` to measure what locust costs in client CPU
per request; it writes ``{"requests", "failures", "seconds", "cpu_s"}`` for the
measured run to the file named by ``RTIM_LT_COST_OUT``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import FastHttpUser, constant, events, task

_start: dict[str, float] = {}


class NoopUser(FastHttpUser):
    host = os.environ.get("RTIM_LT_HOST", "http://127.0.0.1:8000")
    wait_time = constant(0)

    @task
    def noop(self) -> None:
        self.client.get("/noop")


@events.test_start.add_listener
def _on_start(environment: Any, **_: Any) -> None:
    _start.update(wall=time.perf_counter(), cpu=time.process_time())


@events.test_stop.add_listener
def _on_stop(environment: Any, **_: Any) -> None:
    path = os.environ.get("RTIM_LT_COST_OUT")
    if not path or not _start:
        return
    total = environment.stats.total
    with open(path, "w") as fh:
        json.dump(
            {
                "requests": total.num_requests,
                "failures": total.num_failures,
                "seconds": time.perf_counter() - _start["wall"],
                "cpu_s": time.process_time() - _start["cpu"],
            },
            fh,
        )
