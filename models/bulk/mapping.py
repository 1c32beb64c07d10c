"""Column mappings: how one flat row of a file becomes one API event object.

A :class:`ColumnMapping` names, for each event field (``customer_id``,
``type``, ``ts``, ...), the file column it comes from or a constant, and for
each attribute the column and the type to read it as (``str``, ``int``,
``float``, ``bool``). Fields a mapping leaves unset are read from columns
named like them, if any (:meth:`ColumnMapping.over_api_named`). Without a
mapping, columns named like the API fields are taken as those fields and every
other column becomes an attribute (see :meth:`ColumnMapping.default_for`).

The event object a mapping builds is then validated by
:func:`models.customer.events.parse_event`, so a bad row is rejected with the
API's own wording. When a row carries no event id, :func:`derive_event_id`
makes one from the file's identity, the row's position and its content, so
re-running an import never counts a row twice (within the profile's
event-id memory; the importer's checkpoint covers the rest).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from models.errors import ValidationError

EVENT_FIELDS = ("event_id", "customer_id", "type", "ts", "channel", "offer_id", "decision_id")
ATTRIBUTE_TYPES = ("str", "int", "float", "bool", "auto")  # auto: keep the file's type
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class MappingError(ValidationError):
    """A column mapping that cannot work: unknown field, type or column."""

    code = "invalid_mapping"


def derive_event_id(file_identity: str, line: int, content: str) -> str:
    """A stable event id for a row without one: same file, row and content → same id."""
    digest = hashlib.blake2b(
        f"{file_identity}\0{line}\0{content}".encode(), digest_size=12
    ).hexdigest()
    return f"imp-{digest}"


def _read_value(value: Any, kind: str, column: str) -> Any:
    """``value`` (a CSV string or a native Parquet/JSON value) as ``kind``."""
    try:
        if kind == "auto":
            return value
        if kind == "str":
            return value if isinstance(value, str) else str(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(value)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise ValidationError(f"cannot read {value!r} as {kind}", f"column {column}") from None


def _read_ts(value: Any) -> Any:
    """Epoch seconds for numbers and numeric strings, datetimes as epoch, else as is."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class ColumnMapping:
    """Which column (or constant) feeds each event field and attribute."""

    columns: Mapping[str, str] = field(default_factory=dict)  # event field -> column
    constants: Mapping[str, str] = field(default_factory=dict)  # event field -> value
    attributes: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (col, type)

    def __post_init__(self) -> None:
        for name in (*self.columns, *self.constants):
            if name not in EVENT_FIELDS:
                raise MappingError(
                    f"unknown event field {name!r}; expected one of {list(EVENT_FIELDS)}", name
                )
        both = set(self.columns) & set(self.constants)
        if both:
            raise MappingError(f"{sorted(both)} given both as a column and a constant", None)
        for name, (column, kind) in self.attributes.items():
            if not name or not column:
                raise MappingError("attribute names and columns must be non-empty", name)
            if kind not in ATTRIBUTE_TYPES:
                raise MappingError(
                    f"attribute {name!r}: unknown type {kind!r}; expected one of "
                    f"{list(ATTRIBUTE_TYPES)}",
                    f"attributes.{name}",
                )

    @classmethod
    def from_dict(cls, raw: Any) -> ColumnMapping:
        """A mapping from its YAML form (see the README's "Bulk data" section).

        ``{"customer_id": "cust_no", "type": {"value": "purchase"},
        "attributes": {"amount": {"column": "AMT", "type": "float"}, "segment": "str"}}``
        """
        if not isinstance(raw, dict):
            raise MappingError("a column mapping must be an object", None)
        columns: dict[str, str] = {}
        constants: dict[str, str] = {}
        attributes: dict[str, tuple[str, str]] = {}
        for key, value in raw.items():
            if key == "attributes":
                if not isinstance(value, dict):
                    raise MappingError("attributes must be an object", "attributes")
                for name, spec in value.items():
                    if isinstance(spec, str):  # `age: int` reads column `age`
                        attributes[str(name)] = (str(name), spec)
                    elif isinstance(spec, dict):
                        attributes[str(name)] = (
                            str(spec.get("column", name)),
                            str(spec.get("type", "str")),
                        )
                    else:
                        raise MappingError(
                            "an attribute is a type name or {column, type}", f"attributes.{name}"
                        )
            elif isinstance(value, dict) and set(value) == {"value"}:
                constants[str(key)] = str(value["value"])
            elif isinstance(value, str):
                columns[str(key)] = value
            else:
                raise MappingError(f"{key}: give a column name or {{value: ...}}", str(key))
        return cls(columns, constants, attributes)

    @classmethod
    def default_for(cls, header: Iterable[str]) -> ColumnMapping:
        """API-named columns are event fields; every other column an attribute as typed in the file.

        CSV cells are strings, so CSV attributes are strings unless mapped with a type.
        """
        names = list(header)
        return cls(
            {c: c for c in names if c in EVENT_FIELDS},
            {},
            {c: (c, "auto") for c in names if c not in EVENT_FIELDS},
        )

    def over_api_named(self, header: Iterable[str]) -> ColumnMapping:
        """This mapping, plus columns named like API fields for the fields it leaves unset."""
        taken = {*self.columns, *self.constants}
        implied = {c: c for c in header if c in EVENT_FIELDS and c not in taken}
        return ColumnMapping({**implied, **self.columns}, self.constants, self.attributes)

    def merged(self, other: ColumnMapping) -> ColumnMapping:
        """This mapping with ``other``'s entries on top (flags over a mapping file)."""
        columns = {k: v for k, v in self.columns.items() if k not in other.constants}
        constants = {k: v for k, v in self.constants.items() if k not in other.columns}
        return ColumnMapping(
            {**columns, **other.columns},
            {**constants, **other.constants},
            {**self.attributes, **other.attributes},
        )

    @property
    def is_empty(self) -> bool:
        return not (self.columns or self.constants or self.attributes)

    def referenced_columns(self) -> list[str]:
        """Every file column this mapping reads, in a stable order."""
        seen = dict.fromkeys([*self.columns.values(), *(c for c, _ in self.attributes.values())])
        return list(seen)

    def check_columns(self, header: Iterable[str], source: str) -> None:
        """Raise naming every mapped column that ``header`` lacks."""
        present = set(header)
        missing = [c for c in self.referenced_columns() if c not in present]
        if missing:
            raise MappingError(
                f"{source}: no column {', '.join(map(repr, missing))} "
                f"(columns are {', '.join(map(repr, sorted(present)))})",
                "mapping",
            )

    def to_event(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The API event object for one row; empty cells are left out.

        Raises :class:`ValidationError` naming the column when a value cannot
        be read as its attribute's type.
        """
        event: dict[str, Any] = dict(self.constants)
        for name, column in self.columns.items():
            value = row.get(column)
            if value is None or value == "":
                continue
            if name == "ts":
                event[name] = _read_ts(value)
            else:  # warehouse ids are often integers; the API takes strings
                event[name] = value if isinstance(value, str) else str(value)
        attrs: dict[str, Any] = {}
        for name, (column, kind) in self.attributes.items():
            value = row.get(column)
            if value is None or value == "":
                continue
            attrs[name] = _read_value(value, kind, column)
        if attrs:
            event["attributes"] = attrs
        return event
