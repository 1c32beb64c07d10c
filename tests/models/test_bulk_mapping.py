"""Column mappings turn flat rows into API events; derived event ids are stable."""

from __future__ import annotations

import pytest

from models.bulk.mapping import ColumnMapping, MappingError, derive_event_id
from models.errors import ValidationError


def test_mapping_reads_columns_constants_and_typed_attributes() -> None:
    mapping = ColumnMapping.from_dict(
        {
            "customer_id": "cust_no",
            "type": {"value": "profile_update"},
            "ts": "when",
            "attributes": {"age": {"column": "AGE", "type": "int"}, "vip": "bool"},
        }
    )
    event = mapping.to_event({"cust_no": 42, "when": "1700000000", "AGE": "41", "vip": "yes"})
    assert event == {
        "type": "profile_update",
        "customer_id": "42",
        "ts": 1700000000.0,
        "attributes": {"age": 41, "vip": True},
    }


def test_empty_cells_are_left_out_not_sent_as_null() -> None:
    mapping = ColumnMapping({"customer_id": "c"}, {"type": "profile_update"}, {"age": ("a", "int")})
    assert mapping.to_event({"c": "x", "a": ""}) == {"type": "profile_update", "customer_id": "x"}


def test_unreadable_typed_value_names_the_column() -> None:
    mapping = ColumnMapping({}, {}, {"age": ("AGE", "int")})
    with pytest.raises(ValidationError) as err:
        mapping.to_event({"AGE": "forty"})
    assert err.value.field == "column AGE"
    assert "as int" in err.value.message


def test_unknown_mapped_column_is_named_with_the_real_header() -> None:
    mapping = ColumnMapping({"customer_id": "cust"}, {}, {"age": ("AGE", "int")})
    with pytest.raises(MappingError, match=r"no column 'AGE'.*'cust'"):
        mapping.check_columns(["cust", "type"], "f.csv")


def test_bad_mapping_field_or_type_is_refused_up_front() -> None:
    with pytest.raises(MappingError, match="unknown event field"):
        ColumnMapping({"customer": "c"})
    with pytest.raises(MappingError, match="unknown type"):
        ColumnMapping({}, {}, {"age": ("AGE", "integer")})


def test_default_mapping_takes_api_named_columns_and_the_rest_as_attributes() -> None:
    mapping = ColumnMapping.default_for(["customer_id", "type", "page"])
    assert mapping.to_event({"customer_id": "c", "type": "page_view", "page": "/x"}) == {
        "customer_id": "c",
        "type": "page_view",
        "attributes": {"page": "/x"},
    }


def test_derived_event_ids_depend_on_file_row_and_content() -> None:
    a = derive_event_id("file-a", 7, "c1,page_view")
    assert a == derive_event_id("file-a", 7, "c1,page_view")
    assert a != derive_event_id("file-b", 7, "c1,page_view")
    assert a != derive_event_id("file-a", 8, "c1,page_view")
    assert a != derive_event_id("file-a", 7, "c1,purchase")


def test_a_mapping_still_reads_api_named_columns_it_does_not_mention() -> None:
    mapping = ColumnMapping({}, {"type": "profile_update"}, {"age": ("age", "int")})
    full = mapping.over_api_named(["customer_id", "type", "age"])
    assert full.to_event({"customer_id": "c", "type": "page_view", "age": "7"}) == {
        "type": "profile_update",
        "customer_id": "c",
        "attributes": {"age": 7},
    }
