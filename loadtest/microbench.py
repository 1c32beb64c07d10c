"""The in-shard decide microbenchmark: one decision's cost without Ray or HTTP.

In-process and single-threaded, it builds profiles from the same events the
benchmark preloads, loads a catalogue and the bundled propensity model, and
times :func:`models.decisioning.arbitration.decide` call by call (median and p99 in µs):

* ``demo``: the demo catalogue, web / home_hero (what ``POST /v1/decide`` runs);
* ``demo_shard_path``: the same plus what the shard does around it, unpacking
  the stored profile and packing it back with the impression recorded;
* ``synthetic``: a 50-offer catalogue with 20 global rules, cloned from the demo;
* ``decide_many``: batches of 100 requests with one model run per batch;
* ``demo_adaptive``: the demo catalogue with every offer adaptive
  (:func:`adaptive_catalog`: four predictors, Thompson sampling with the
  default 100 Monte Carlo draws for the choice probabilities), its models
  trained on 5,000 responses first;
* ``learn_one``: one attributed response learned by
  :class:`actors.learning.Learning` (what a ``response`` event adds);
* ``shard_method``: :class:`actors.shard.ProfileShardImpl` (the actor's class,
  called in-process without Ray) deciding one request per call, as
  ``POST /v1/decide`` makes it: decision log, impressions and the journal
  (``fsync=off``, in a temporary directory) included. Set against the server's
  shard CPU per decide, it shows what Ray's actor call adds.
* ``shard_batch``: ``ProfileShardImpl.decide_packed`` with 100 requests per
  call (what ``POST /v1/decide/batch`` sends a shard over the shard wire:
  msgpack requests in, packed answers out), with the interaction history and
  its profile context on, as the server runs by default;
* ``shard_events``: ``ProfileShardImpl.apply_events`` with 100 msgpack-packed
  events per call (the benchmark's event mix), journal on.

The two bulk cases report CPU µs per decision / per event: the median over
``repeats`` runs of ``calls`` calls each (journal ``fsync=off`` in a temporary
directory, so they time the shard's own work, not the disk). Run them alone
with ``python -m loadtest.microbench --shard-bulk``.

Run alone with ``python -m loadtest.microbench``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from loadtest.workload import EventFactory, customer_id, live_context
from models.customer.events import parse_event
from models.customer.store import ProfileStore
from models.decisioning.arbitration import decide, decide_many
from models.decisioning.catalog import Catalog, load_catalog
from models.decisioning.request import DecideRequest
from models.learning.registry import ModelRegistry
from models.settings import Settings

TARGET_US = 200.0  # the design target for one in-shard decision (median)


def build_store(n: int, now: float, seed: int = 11) -> ProfileStore:
    """``n`` customers with the benchmark's preload histories."""
    store = ProfileStore()
    factory = EventFactory("micro", seed)
    for i in range(n):
        raw = factory.profile_history(customer_id(i, "m"))
        events = [parse_event(ev, k, now) for k, ev in enumerate(raw)]
        store.apply_events(events, now)
    return store


def synthetic_catalog(base: Catalog, offers: int = 50, global_rules: int = 20) -> Catalog:
    """The demo catalogue with its offers cloned to ``offers`` and its rules to ``global_rules``."""
    data = base.to_dict()
    data["version"] = f"synthetic-{offers}x{global_rules}"
    originals = data["offers"]
    out = list(originals)
    k = 1
    while len(out) < offers:
        for spec in originals:
            if len(out) >= offers:
                break
            out.append(_clone_offer(spec, k))
        k += 1
    data["offers"] = out
    stages = data["policies"]
    existing = [(stage, r) for stage, rules in stages.items() for r in rules]
    k = 1
    while sum(len(r) for r in stages.values()) < global_rules:
        stage, rule = existing[(k - 1) % len(existing)]
        stages[stage].append({**copy.deepcopy(rule), "id": f"{rule['id']}_{k}"})
        k += 1
    return load_catalog(data)


def adaptive_catalog(base: Catalog) -> Catalog:
    """The demo catalogue with every offer adaptive (what ``demo_adaptive`` times)."""
    data = base.to_dict()
    data["version"] = f"{base.version}-adaptive"
    data["learning"] = {
        "offers": "all",
        "predictors": ["attr.age", "attr.income", "context.device", "tenure_days"],
    }
    return load_catalog(data)


def _adaptive(
    demo: Catalog, scorer: Any, profiles: dict, requests: list[DecideRequest], now: float
) -> dict[str, Any]:
    from actors.learning import Learning

    catalog = adaptive_catalog(demo)
    learning = Learning(seed=3)
    learner = learning.models
    rng = random.Random(9)
    train = [decide(profiles[r.customer_id], r, catalog, scorer, now, learner=learner)
             for r in requests[:5000]]  # fmt: skip
    for record in train:
        if record.offers:
            outcome = "accepted" if rng.random() < 0.1 else "rejected"
            learning.learn(record, record.offers[0].offer_id, outcome, catalog)
    args = [(profiles[r.customer_id], r, catalog, scorer, now, 1800.0, learner) for r in requests]
    res = _stats(_time_calls(decide, args, warmup=min(200, len(requests))))
    res["models"] = len(learner.merged)
    res["responses_learned"] = learning.counts["learned"]
    fresh = [decide(profiles[r.customer_id], r, catalog, scorer, now, learner=learner)
             for r in requests]  # fmt: skip
    fresh = [r for r in fresh if r.offers]
    learn = _stats(_time_calls(
        lambda rec: learning.learn(rec, rec.offers[0].offer_id, "accepted", catalog),
        [(r,) for r in fresh], warmup=min(100, len(fresh) // 4),
    ))  # fmt: skip
    return {"decide": res, "learn_one": learn}


def _clone_offer(spec: dict, k: int) -> dict:
    clone = copy.deepcopy(spec)
    clone["id"] = f"{spec['id']}_{k}"
    for t in clone["treatments"]:
        t["id"] = f"{t['id']}_{k}"
    for stage in ("eligibility", "applicability", "suitability"):
        for rule in clone.get(stage, []):
            rule["id"] = f"{rule['id']}_{k}"
    for w in clone.get("context_weights", []):
        w["id"] = f"{w['id']}_{k}"
    return clone


def _time_calls(fn: Any, args: list[tuple], warmup: int) -> list[float]:
    """µs per call of ``fn(*a)`` for each ``a`` in ``args`` (after ``warmup`` calls)."""
    for a in args[:warmup]:
        fn(*a)
    perf = time.perf_counter_ns
    out = []
    for a in args:
        t0 = perf()
        fn(*a)
        out.append((perf() - t0) / 1000.0)
    return out


def _stats(us: list[float]) -> dict[str, float]:
    us = sorted(us)
    return {
        "median_us": round(statistics.median(us), 1),
        "p99_us": round(us[min(len(us) - 1, int(len(us) * 0.99))], 1),
        "calls": len(us),
    }


def run(iterations: int = 3000, batches: int = 30, batch_size: int = 100) -> dict[str, Any]:
    """All microbenchmark cases; µs are medians of single calls."""
    settings = Settings()
    demo = load_catalog(settings.catalog)
    registry = ModelRegistry(settings.model_registry, demo.group_of)
    scorer = registry.latest()
    now = time.time()
    n_profiles = min(iterations, 500)
    store = build_store(n_profiles, now)
    ids = list(store.ids())
    rng = random.Random(5)
    requests = [
        DecideRequest(cid, ("web",), "home_hero", live_context(rng, now))
        for cid in (ids[i % len(ids)] for i in range(iterations))
    ]
    profiles = {cid: store.get(cid) for cid in ids}
    out: dict[str, Any] = {"profiles": n_profiles, "model_version": registry.latest_version()}

    def pure(catalog: Catalog) -> dict[str, Any]:
        args = [(profiles[r.customer_id], r, catalog, scorer, now) for r in requests]
        res = _stats(_time_calls(decide, args, warmup=min(200, iterations)))
        res["candidates"] = len(catalog.candidates("web", "home_hero"))
        res["offers"] = len(catalog.offers)
        res["global_rules"] = len(catalog.global_rules)
        res["rules"] = len(catalog.rules)
        return res

    out["demo"] = pure(demo)

    def shard_path(req: DecideRequest) -> None:
        p = store.get_or_new(req.customer_id)
        d = decide(p, req, demo, scorer, now)
        for o in d.offers:
            p.record_contact(now, o.offer_id, o.channel, "impression")
        store.put(p)

    # Profiles grow by an impression per call here, as in the shard.
    out["demo_shard_path"] = _stats(
        _time_calls(shard_path, [(r,) for r in requests], warmup=min(200, iterations))
    )
    out["synthetic"] = pure(synthetic_catalog(demo))
    adaptive = _adaptive(demo, scorer, profiles, requests, now)
    out["demo_adaptive"] = adaptive["decide"]
    out["learn_one"] = adaptive["learn_one"]

    groups = [
        [(profiles[r.customer_id], r) for r in rng.sample(requests, min(batch_size, len(requests)))]
        for _ in range(batches)
    ]
    per_batch = _time_calls(
        lambda items: decide_many(items, demo, scorer, now), [(g,) for g in groups], warmup=3
    )
    median_batch_us = statistics.median(per_batch)
    out["decide_many"] = {
        "batch": batch_size,
        "batches": batches,
        "median_batch_ms": round(median_batch_us / 1000.0, 3),
        "us_per_decision": round(median_batch_us / batch_size, 1),
        "decisions_per_s": round(batch_size / (median_batch_us / 1e6), 1),
    }
    out["shard_method"] = asyncio.run(_shard_method(requests, store, now))
    out["target_us"] = TARGET_US
    out["meets_target"] = out["demo"]["median_us"] <= TARGET_US
    out["synthetic_meets_target"] = out["synthetic"]["median_us"] <= TARGET_US
    out["adaptive_meets_target"] = out["demo_adaptive"]["median_us"] <= TARGET_US
    return out


async def _shard_method(
    requests: list[DecideRequest], store: ProfileStore, now: float
) -> dict[str, Any]:
    """``ProfileShardImpl.decide`` one request at a time: wall and CPU µs per call."""
    from actors.shard import ProfileShardImpl  # the class only; Ray is not started

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, fsync="off", shards=1, partitions=8)
        shard = ProfileShardImpl(
            0, settings.to_dict(), {"epoch": 1, "owners": [0] * 8, "shards": 1}
        )
        for cid, blob in store.items():
            shard.profiles.store.put_blob(cid, blob)
        calls = requests[: min(len(requests), 1000)]
        for r in calls[:50]:
            await shard.decide([r], None, 1)
        wall: list[float] = []
        cpu0 = time.process_time()
        for r in calls:
            t0 = time.perf_counter_ns()
            await shard.decide([r], None, 1)
            wall.append((time.perf_counter_ns() - t0) / 1000.0)
        cpu_us = (time.process_time() - cpu0) / len(calls) * 1e6
        shard.durable.close()
    return {**_stats(wall), "cpu_us_per_call": round(cpu_us, 1)}


BULK_PROFILES = 2000  # customers the bulk cases pick from
BULK_BATCH = 100  # decisions or events per shard call, as the benchmark sends them
BULK_MATURITY = 20  # events of the benchmark's mix applied to each profile first


def mature_store(n: int, now: float, events_each: int = BULK_MATURITY) -> ProfileStore:
    """:func:`build_store` plus ``events_each`` events of the firehose mix per customer.

    A server that has run a while holds profiles like these (full session
    event and page lists, a cart, counters for most event types), about
    1.4 KB packed; fresh preloads are a third of that and cheaper to unpack.
    """
    store = build_store(n, now)
    factory = EventFactory("mature", 29)
    ids = list(store.ids())
    for _ in range(events_each):
        batch = [parse_event(factory.random_event(cid), k, now) for k, cid in enumerate(ids)]
        store.apply_events(batch, now)
    return store


def _bulk_shard(tmp: str, store: ProfileStore) -> Any:
    """A one-shard ``ProfileShardImpl`` (no Ray) holding ``store``'s profiles."""
    from actors import heap
    from actors.shard import ProfileShardImpl  # the class only; Ray is not started

    settings = Settings(data_dir=tmp, fsync="off", shards=1, partitions=8)
    shard = ProfileShardImpl(0, settings.to_dict(), {"epoch": 1, "owners": [0] * 8, "shards": 1})
    for cid, blob in store.items():
        shard.profiles.store.put_blob(cid, blob)
    heap.settle()  # what the actor does once it has started (actors/heap.py)
    return shard


async def _cpu_per_item(call: Any, payloads: list[Any], items: int, repeats: int) -> dict:
    """CPU µs per item of ``await call(p)`` over ``payloads``, split into ``repeats`` runs."""
    per_run = len(payloads) // repeats
    runs: list[float] = []
    wall: list[float] = []
    for k in range(repeats):
        chunk = payloads[k * per_run : (k + 1) * per_run]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for p in chunk:
            await call(p)
        runs.append((time.process_time() - cpu0) / (len(chunk) * items) * 1e6)
        wall.append((time.perf_counter() - t0) / (len(chunk) * items) * 1e6)
    return {
        "cpu_us_per_item": round(statistics.median(runs), 1),
        "wall_us_per_item": round(statistics.median(wall), 1),
        "runs_cpu_us": [round(r, 1) for r in runs],
        "batch": items,
        "calls_per_run": per_run,
        "repeats": repeats,
    }


async def _shard_batch(store: ProfileStore, now: float, calls: int, repeats: int) -> dict:
    """``decide_packed`` with ``BULK_BATCH`` requests per call (µs per decision)."""
    from actors.decide_wire import pack_requests, unpack_answers

    rng = random.Random(17)
    ids = list(store.ids())
    # Warm-up fills the decision log, as in a shard that has run a while: its
    # records then get evicted as new ones come (the garbage collector's load).
    warmup = Settings().decision_log_size // BULK_BATCH + 5
    payloads = [
        pack_requests([DecideRequest(rng.choice(ids), ("web",), "home_hero")
                       for _ in range(BULK_BATCH)])
        for _ in range(calls + warmup)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shard = _bulk_shard(tmp, store)

        async def call(blob: bytes) -> None:
            answer = await shard.decide_packed(blob, None, 1)
            if not isinstance(answer, bytes):
                raise RuntimeError(f"shard_batch: refused: {answer!r:.200}")

        for p in payloads[:warmup]:  # the answers are checked here, not while timed
            answers = unpack_answers(await shard.decide_packed(p, None, 1))
            if len(answers) != BULK_BATCH or not all(a.decision_id for a in answers):
                raise RuntimeError(f"shard_batch: unexpected answer {answers!r:.200}")
        out = await _cpu_per_item(call, payloads[warmup:], BULK_BATCH, repeats)
        out["warmup_calls"] = warmup
        out["history_rows"] = shard.history.rows if shard.history is not None else 0
        if shard.timer is not None:
            shard.timer.cancel()
        shard.durable.close()
        if shard.history is not None:
            shard.history.close()
    return out


async def _shard_events(store: ProfileStore, calls: int, repeats: int) -> dict:
    """``apply_events`` with ``BULK_BATCH`` packed events per call (µs per event)."""
    from actors.profiles import pack_events
    from models.customer.events import parse_event

    rng = random.Random(19)
    ids = list(store.ids())
    factory = EventFactory("bulk", 23)
    now = time.time()
    payloads = [
        pack_events([parse_event(factory.random_event(rng.choice(ids)), k, now)
                     for k in range(BULK_BATCH)])
        for _ in range(calls + 5)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shard = _bulk_shard(tmp, store)

        async def call(blob: bytes) -> None:
            answer = await shard.apply_events(blob, None, 1)
            if not isinstance(answer, dict) or answer["applied"] != BULK_BATCH:
                raise RuntimeError(f"shard_events: unexpected answer {answer!r:.200}")

        for p in payloads[:5]:
            await call(p)
        out = await _cpu_per_item(call, payloads[5:], BULK_BATCH, repeats)
        if shard.timer is not None:
            shard.timer.cancel()
        shard.durable.close()
    return out


def run_shard_bulk(calls: int = 100, repeats: int = 5) -> dict[str, Any]:
    """The ``shard_batch`` and ``shard_events`` cases (see the module docstring)."""
    now = time.time()
    store = mature_store(BULK_PROFILES, now)

    async def both() -> dict[str, Any]:
        return {
            "shard_batch": await _shard_batch(store, now, calls, repeats),
            "shard_events": await _shard_events(store, calls, repeats),
        }

    return {"profiles": BULK_PROFILES, **asyncio.run(both())}


def main() -> int:
    quick = "--quick" in sys.argv
    if "--shard-bulk" in sys.argv:
        print(json.dumps(run_shard_bulk(20 if quick else 100), indent=2))
        return 0
    print(json.dumps(run(300 if quick else 3000, 5 if quick else 30), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
