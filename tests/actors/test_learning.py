"""A shard's adaptive models without Ray: learning from responses, dedupe, durability."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from actors.shard import ProfileShardImpl
from models.customer.events import Event
from models.decisioning.request import DecideRequest
from models.partitioning import PartitionMap
from models.settings import load_settings

PMAP = PartitionMap.initial(8, 1).to_dict()


def learning_catalog(version: str = "learn-1", offers: tuple[str, ...] = ("card", "loan")) -> dict:
    return {
        "version": version,
        "channels": {"web": {"kind": "inbound", "cost": 0.0}},
        "offers": [
            {
                "id": o,
                "name": o,
                "group": o,
                "value": 10,
                "treatments": [{"id": f"{o}_web", "channel": "web"}],
            }
            for o in offers
        ],
        "learning": {"offers": "all", "predictors": ["attr.segment", "context.device"]},
    }


def make(data_dir: Path, catalog: dict | None = None) -> ProfileShardImpl:
    settings = load_settings(None, {"data_dir": str(data_dir), "partitions": 8, "shards": 1})
    return ProfileShardImpl(0, settings.to_dict(), PMAP, catalog or learning_catalog())


def response(cid: str, decision_id: str, outcome: str, event_id: str | None = None) -> Event:
    return Event(
        event_id or uuid.uuid4().hex, cid, "response", time.time(), "web",
        {"outcome": outcome}, None, decision_id,
    )  # fmt: skip


async def decide(shard: ProfileShardImpl, cid: str) -> tuple[str, str]:
    record = (await shard.decide([DecideRequest(cid, ("web",))], None, 1))[0]
    return record.decision_id, record.offers[0].offer_id


def evidence(shard: ProfileShardImpl, key: str) -> float:
    ev = shard.learning.models.merged.get(key)
    return 0.0 if ev is None else ev.n


async def test_a_response_teaches_the_chosen_offer_with_decision_time_predictors(
    tmp_path: Path,
) -> None:
    shard = make(tmp_path)
    await shard.apply_events([Event("p1", "a", "profile_update", time.time(), None,
                                    {"segment": "young"}, None, None)], None, 1)  # fmt: skip
    did, offer = await decide(shard, "a")
    assert shard.engine.log.get(did).predictors == {f"{offer}@web": ["young", "missing"]}
    # The segment changes after the decision; the model learns what the decision saw.
    await shard.apply_events([Event("p2", "a", "profile_update", time.time(), None,
                                    {"segment": "senior"}, None, None)], None, 1)  # fmt: skip
    await shard.apply_events([response("a", did, "accepted", "r1")], None, 1)
    ev = shard.learning.models.merged[f"{offer}@web"]
    assert ev.n == 1 and ev.pos == 1 and ev.bins["attr.segment"] == {"young": [1.0, 1.0]}


async def test_duplicates_unknown_and_erased_decisions_never_learn(tmp_path: Path) -> None:
    shard = make(tmp_path)
    did, offer = await decide(shard, "a")
    key = f"{offer}@web"
    await shard.apply_events([response("a", did, "clicked", "r1")], None, 1)
    out = await shard.apply_events([response("a", did, "clicked", "r1")], None, 1)
    assert out["duplicates"] == 1  # the profile's dedupe drops it before attribution
    await shard.apply_events([response("a", did, "accepted", "r2")], None, 1)  # same offer again
    await shard.apply_events([response("a", "no-such-decision", "accepted")], None, 1)
    await shard.apply_events([response("b", did, "accepted")], None, 1)  # not b's decision
    did_c, _ = await decide(shard, "c")
    await shard.delete_profile("c", 1)
    await shard.apply_events([response("c", did_c, "accepted")], None, 1)
    assert evidence(shard, key) == 1
    counts = shard.learning.counts
    assert counts["learned"] == 1 and counts["repeat"] == 1 and counts["unknown_decision"] == 3


async def test_evidence_survives_restart_from_journal_and_from_snapshot(tmp_path: Path) -> None:
    shard = make(tmp_path)
    keys = []
    for i in range(6):
        did, offer = await decide(shard, f"c{i}")
        keys.append(f"{offer}@web")
        await shard.apply_events([response(f"c{i}", did, "accepted" if i % 2 else "rejected")],
                                 None, 1)  # fmt: skip
        if i == 2:
            await shard.snapshot()
    before = {k: evidence(shard, k) for k in keys}
    await shard.freeze_model(keys[0], True)
    shard.durable.close()
    again = make(tmp_path)
    assert {k: evidence(again, k) for k in keys} == before
    assert sum(before.values()) == 6
    assert keys[0] in again.learning.models.frozen


async def test_reset_is_durable_and_a_new_catalogue_keeps_surviving_offers(tmp_path: Path) -> None:
    shard = make(tmp_path)
    learned = set()
    for i in range(10):
        did, offer = await decide(shard, f"c{i}")
        learned.add(f"{offer}@web")
        await shard.apply_events([response(f"c{i}", did, "accepted")], None, 1)
    await shard.set_catalog(learning_catalog("learn-2", ("card", "loan", "pension")))
    assert all(evidence(shard, k) > 0 for k in learned)
    reset = next(iter(learned))
    await shard.reset_model(reset)
    shard.durable.close()
    again = make(tmp_path)
    assert evidence(again, reset) == 0
    assert all(evidence(again, k) > 0 for k in learned - {reset})
    models = (await again.adaptive_models())["models"]
    assert {m["model"] for m in models} == {"card@web", "loan@web", "pension@web"}


async def test_empty_answer_carries_a_decision_id_and_probability(tmp_path: Path) -> None:
    doc = learning_catalog()
    doc["arbitration"] = {"min_priority": 100}  # nothing is worth saying
    shard = make(tmp_path, doc)
    record = (await shard.decide([DecideRequest("a", ("web",))], None, 1))[0]
    answer = record.answer()
    assert answer["offers"] == [] and answer["decision_id"] and answer["probability"] == 1.0


def uplift_catalog() -> dict:
    doc = learning_catalog("uplift-1")
    doc["learning"].update(ranking="incremental", goal="purchase", goal_window="1h",
                           predictors=["attr.segment"], starting_propensity=0.05)  # fmt: skip
    doc["arbitration"] = {"min_priority": 100}  # every answer is "no message"
    return doc


async def test_no_message_decisions_teach_the_baseline_by_response_and_goal(
    tmp_path: Path,
) -> None:
    shard = make(tmp_path, uplift_catalog())
    record = (await shard.decide([DecideRequest("a", ("web",))], None, 1))[0]
    assert record.offers == [] and record.predictors == {"none@web": ["missing"]}
    await shard.apply_events([response("a", record.decision_id, "ignored")], None, 1)
    assert evidence(shard, "none@web") == 1
    record_b = (await shard.decide([DecideRequest("b", ("web",))], None, 1))[0]
    purchase = Event(uuid.uuid4().hex, "b", "purchase", time.time(), None, {}, None, None)
    await shard.apply_events([purchase], None, 1)
    ev = shard.learning.models.merged["none@web"]
    assert ev.n == 2 and ev.pos == 1 and "none@web" in record_b.learned
    # A second purchase does not teach the same decision twice; a late one nothing at all.
    late = Event(uuid.uuid4().hex, "b", "purchase", time.time() + 7200, None, {}, None, None)
    await shard.apply_events([purchase._replace(event_id="p2"), late], None, 1)
    assert shard.learning.models.merged["none@web"].n == 2
    assert shard.learning.counts["repeat"] == 1
    assert shard.learning.counts["goal_unattributed"] == 1
    shard.durable.close()
    again = make(tmp_path, uplift_catalog())
    assert again.learning.models.merged["none@web"].pos == 1
    assert again.learning.latest["b"] == record_b.decision_id


async def test_no_outcome_within_the_window_is_a_durable_negative(tmp_path: Path) -> None:
    doc = learning_catalog("timeout-1")
    doc["learning"]["negative_after"] = "10m"
    shard = make(tmp_path, doc)
    answered, _ = await decide(shard, "a")
    silent, offer_b = await decide(shard, "b")
    await shard.apply_events([response("a", answered, "accepted")], None, 1)
    assert await shard.expire_outcomes(time.time() + 60) == 0  # not yet
    assert await shard.expire_outcomes(time.time() + 601) == 1  # b's decision only
    merged = shard.learning.models.merged
    assert sum(ev.n for ev in merged.values()) == 2
    assert sum(ev.pos for ev in merged.values()) == 1
    assert shard.engine.log.get(silent).learned == [f"{offer_b}@web"]
    shard.durable.close()
    again = make(tmp_path, doc)
    assert sum(ev.n for ev in again.learning.models.merged.values()) == 2
    assert await again.expire_outcomes(time.time() + 601) == 0  # never twice
