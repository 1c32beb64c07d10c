"""Catalogue loading: the demo file, round trips, and errors that name the place."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from models.decisioning.catalog import Catalog, load_catalog
from models.errors import CatalogError

DEMO_CATALOG = Path(__file__).resolve().parents[2] / "models" / "demo" / "catalog.yaml"

DEMO_OFFERS = {
    "credit_card",
    "personal_loan",
    "savings_account",
    "mortgage_review",
    "premium_account",
    "retention_offer",
    "service_message",
}


def demo_catalog() -> Catalog:
    return load_catalog(DEMO_CATALOG)


def minimal() -> dict:
    return {
        "version": "t1",
        "channels": {
            "web": {"kind": "inbound", "cost": 0, "placements": ["hero", "side"]},
            "email": {"kind": "outbound", "cost": 0.02},
        },
        "offers": [
            {
                "id": "card",
                "group": "credit",
                "value": 100,
                "tags": ["sales"],
                "treatments": [
                    {"id": "card_web", "channel": "web", "placement": "hero"},
                    {"id": "card_email", "channel": "email"},
                ],
                "eligibility": [
                    {
                        "id": "adults",
                        "reason": "adults only",
                        "exclude_when": {"fact": "attr.age", "op": "<", "value": 18},
                    }
                ],
            },
            {
                "id": "saver",
                "group": "savings",
                "value": 40,
                "treatments": [{"id": "saver_web", "channel": "web"}],
            },
        ],
        "policies": {
            "suitability": [
                {
                    "id": "complaint_cooldown",
                    "reason": "no sales after a complaint",
                    "applies_to": {"tags": ["sales"]},
                    "exclude_when": {"fact": "since.complaint", "op": "<", "value": "5m"},
                }
            ]
        },
        "contact_policies": [
            {
                "id": "email_weekly",
                "reason": "1 email/week",
                "scope": "channel",
                "channels": ["email"],
                "max": 1,
                "period": "7d",
            },
        ],
        "arbitration": {
            "min_priority": 0.5,
            "fallback": [{"offer_id": "saver", "channel": "web"}],
        },
    }


def test_demo_catalogue_loads_with_the_agreed_offers_and_channels() -> None:
    cat = demo_catalog()
    assert cat.version == "demo-bank-2025.1"
    assert set(cat.offers) == DEMO_OFFERS
    assert set(cat.channels) == {
        "web", "app", "email", "sms", "call_center", "outbound_call", "branch"
    }  # fmt: skip
    assert cat.channels["outbound_call"].cost == 8.0
    assert cat.channels["outbound_call"].kind == "outbound"
    assert cat.offers["mortgage_review"].group == "mortgage"
    assert "sales" in cat.offers["credit_card"].tags
    assert "sales" not in cat.offers["service_message"].tags
    assert cat.arbitration.impressions == "on_decide"
    assert cat.fallback_offers(["web"])[0]["offer_id"] == "service_message"


def test_catalogue_round_trips_through_json() -> None:
    cat = demo_catalog()
    data = json.loads(json.dumps(cat.to_dict()))
    again = load_catalog(data)
    assert again.to_dict() == cat.to_dict()
    assert again.version == cat.version


def test_catalogue_loads_from_path_yaml_text_and_dict(tmp_path: Path) -> None:
    text = DEMO_CATALOG.read_text()
    as_json = tmp_path / "catalog.json"
    as_json.write_text(json.dumps(minimal()))
    assert load_catalog(DEMO_CATALOG).version == load_catalog(str(DEMO_CATALOG)).version
    assert load_catalog(text).version == "demo-bank-2025.1"
    assert load_catalog(yaml.safe_load(text)).version == "demo-bank-2025.1"
    assert load_catalog(as_json).version == "t1"


def test_candidates_for_a_placement_include_treatments_without_one() -> None:
    cat = load_catalog(minimal())
    assert {c.treatment_id for c in cat.candidates("web")} == {"card_web", "saver_web"}
    assert {c.treatment_id for c in cat.candidates("web", "hero")} == {"card_web", "saver_web"}
    assert {c.treatment_id for c in cat.candidates("web", "side")} == {"saver_web"}
    assert cat.candidates("sms") == ()


def test_global_rules_apply_only_to_selected_offers() -> None:
    cat = load_catalog(minimal())
    card = cat.candidates("web", "hero")[0]
    saver = cat.candidates("web", "side")[0]
    assert [r.id for r in card.rules] == ["adults", "complaint_cooldown"]
    assert [r.id for r in saver.rules] == []


def test_date_only_end_includes_the_whole_day() -> None:
    data = minimal()
    data["offers"][0]["start"] = "2025-01-01"
    data["offers"][0]["end"] = "2025-01-31"
    offer = load_catalog(data).offers["card"]
    assert offer.end - offer.start == 31 * 86400


def _set(path: str, value: object) -> Callable[[dict], None]:
    """Set a dotted path (list indexes as numbers) in the catalogue dict."""

    def apply(d: dict) -> None:
        *parents, last = path.split(".")
        node: object = d
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]  # type: ignore[union-attr]
        else:
            node[last] = value  # type: ignore[index]

    return apply


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set("version", _DELETE), "version"),
        (_set("version", 1.2), "version"),
        (
            _set("offers.0.eligibility.0.exclude_when.fact", "attr"),
            "offers[card].eligibility[adults].exclude_when.fact",
        ),
        (
            _set("offers.0.eligibility.0.exclude_when.fact", "since_credit_fail"),
            "offers[card].eligibility[adults].exclude_when.fact",
        ),
        (
            _set("offers.0.eligibility.0.exclude_when.op", "=>"),
            "offers[card].eligibility[adults].exclude_when.op",
        ),
        (
            _set("policies.suitability.0.exclude_when.value", "5 mins"),
            "policies.suitability[complaint_cooldown].exclude_when.value",
        ),
        (
            _set("policies.suitability.0.applies_to", {"tags": ["salez"]}),
            "policies.suitability[complaint_cooldown].applies_to.tags[0]",
        ),
        (
            _set("policies.suitability.0.reason", ""),
            "policies.suitability[complaint_cooldown].reason",
        ),
        (_set("offers.1.id", "card"), "offers[card].id"),
        (
            _set("offers.0.treatments.1.channel", "fax"),
            "offers[card].treatments[card_email].channel",
        ),
        (
            _set("offers.0.treatments.1.placement", "hero"),
            "offers[card].treatments[card_email].placement",
        ),
        (_set("offers.0.treatments", []), "offers[card].treatments"),
        (_set("offers.0.value", "lots"), "offers[card].value"),
        (_set("offers.0.levers", -1), "offers[card].levers"),
        (_set("offers.0.valeu", 3), "offers[0]"),
        (_set("offers.0.end", "2020-13-01"), "offers[card].end"),
        (lambda d: d["offers"][0].update(start="2025-02-01", end="2025-01-01"), "offers[card].end"),
        (_set("channels.web.kind", "both"), "channels[web].kind"),
        (_set("channels.web.cost", -1), "channels[web].cost"),
        (_set("contact_policies.0.scope", "customer"), "contact_policies[email_weekly].scope"),
        (_set("contact_policies.0.period", "weekly"), "contact_policies[email_weekly].period"),
        (_set("contact_policies.0.max", 0), "contact_policies[email_weekly].max"),
        (
            _set("contact_policies.0.channels", ["fax"]),
            "contact_policies[email_weekly].channels[0]",
        ),
        (_set("arbitration.fallback.0.offer_id", "nope"), "arbitration.fallback[0].offer_id"),
        (_set("arbitration.fallback.0.channel", "email"), "arbitration.fallback[0].channel"),
        (_set("arbitration.impressions", "sometimes"), "arbitration.impressions"),
        (_set("arbitration.min_priority", "high"), "arbitration.min_priority"),
        (_set("arbitration.context_weights", [{"weight": 2}]), "arbitration.context_weights[0]"),
        (
            _set("arbitration.context_weights", [{"channel": "fax", "weight": 2}]),
            "arbitration.context_weights[0].channel",
        ),
        (
            _set("policies.eligibility", [{"id": "x", "reason": "r", "require": {"any": "no"}}]),
            "policies.eligibility[x].require.any",
        ),
        (_set("policies.suitability.0.id", "bad id!"), "policies.suitability[0].id"),
        (_set("extra_key", 1), "catalog"),
    ],
)
def test_invalid_catalogues_raise_naming_the_place(
    change: Callable[[dict], None], field: str
) -> None:
    data = copy.deepcopy(minimal())
    change(data)
    with pytest.raises(CatalogError) as err:
        load_catalog(data)
    assert err.value.field == field
    assert field in err.value.message  # the message names the place too, for logs


def test_duplicate_rule_ids_in_one_list_are_rejected() -> None:
    data = minimal()
    data["offers"][0]["eligibility"].append(copy.deepcopy(data["offers"][0]["eligibility"][0]))
    with pytest.raises(CatalogError) as err:
        load_catalog(data)
    assert err.value.field == "offers[card].eligibility[adults].id"


def test_unreadable_sources_raise_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog("version: [unclosed\n")
    with pytest.raises(CatalogError):
        load_catalog("- just\n- a list\n")
