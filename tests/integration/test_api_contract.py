"""The API contract, fuzzed: schemathesis over every operation of the real server.

Each operation gets at most ``EXAMPLES`` generated requests (bodies, paths,
query strings, hostile strings included), sent with the suite's admin key.
No answer may be a 5xx, every status must be documented for its operation,
and every answer must match its documented schema.
(schemathesis' own pytest plugin does not load under this pytest version, so
the operations are walked here, one Hypothesis run each.)

Operations that change the cluster's layout (scaling, partition moves) are
fuzzed with a key that lacks the ``admin`` scope: a generated ``{"shards": 3}``
would otherwise re-shard the server every other test shares. They get 403s,
still checked against the documented schema.
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from tests_support import auth_headers

from models.access import KeyStore

EXAMPLES = 25
LAYOUT_CHANGES = {"PUT /v1/admin/shards", "POST /v1/admin/moves", "POST /v1/admin/rebalance"}


def fuzz(op, calls: dict[str, int], headers: dict[str, str]) -> None:
    """Up to ``EXAMPLES`` generated requests to one operation, each checked."""
    label = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=op.as_strategy())
    def run(case) -> None:
        calls[label] = calls.get(label, 0) + 1
        case.call_and_validate(
            headers=headers,
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            timeout=30,
        )

    run()


def test_no_5xx_and_every_answer_matches_its_schema(server: str, server_settings) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    _, reader = KeyStore(server_settings.data_dir).create("contract-fuzz", "reports:read")
    calls: dict[str, int] = {}
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        fuzz(op, calls, auth_headers(reader) if label in LAYOUT_CHANGES else auth_headers())
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert len(operations) >= 17 and set(calls) == labels, calls
    assert labels >= LAYOUT_CHANGES
    layout = httpx.get(f"{server}/v1/admin/shards", headers=auth_headers(), timeout=30).json()
    assert len(layout["shards"]) == server_settings.shards  # the shared server is as it was
    print(f"schemathesis: {len(operations)} operations, {sum(calls.values())} examples")


async def test_openapi_types_answers_and_documents_real_errors(client) -> None:
    doc = (await client.get("/openapi.json")).json()
    decide = doc["paths"]["/v1/decide"]["post"]["responses"]
    assert decide["200"]["content"]["application/json"]["schema"]["required"][0] == "decision_id"
    for status in ("400", "401", "403", "413", "415", "429", "503"):
        err = decide[status]["content"]["application/json"]["schema"]
        assert err["properties"]["error"]["required"] == ["code", "message", "field"]
    # Parameter errors are 400s with our body, never FastAPI's 422.
    assert "422" not in doc["paths"]["/v1/profiles/{customer_id}"]["get"]["responses"]
    assert "HTTPValidationError" not in str(doc)
    assert "security" not in doc["paths"]["/healthz"]["get"]
