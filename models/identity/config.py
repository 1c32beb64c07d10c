"""Identifier types and keys: which types exist, how they are validated, profile ids.

Channels name a customer by typed identifiers (``{"cookie": "…", "account":
"…"}``). Each type is *known* (it names a person: ``account``,
``email_sha256``) or *anonymous* (it names a browser or device: ``cookie``,
``device``). See ``models/identity/__init__.py`` for the rules as a whole.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from models.errors import ValidationError
from models.settings import SettingsError

KNOWN: Literal["known"] = "known"
ANONYMOUS: Literal["anonymous"] = "anonymous"
DEFAULT_TYPES: dict[str, str] = {
    "account": KNOWN,
    "email_sha256": KNOWN,
    "cookie": ANONYMOUS,
    "device": ANONYMOUS,
}
MAX_IDENTIFIER_LEN = 256
MERGED_FACT = "merged"  # last["merged:<id>"]: when that profile was absorbed here
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # no ":" — it separates key parts
_CONFIG_KEYS = ("types", "max_identifiers", "customer_id_type")


@dataclass(frozen=True)
class IdentityConfig:
    """Identifier types (``known``/``anonymous``, in priority order) and limits."""

    types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    max_identifiers: int = 10  # per request, and per profile after a link
    customer_id_type: str | None = "account"  # its value is the profile id

    def __post_init__(self) -> None:
        if not isinstance(self.types, dict) or not self.types:
            raise SettingsError("setting identity.types must be a non-empty mapping")
        for name, kind in self.types.items():
            if not isinstance(name, str) or not _TYPE_NAME.match(name):
                raise SettingsError(
                    f"setting identity.types: {name!r} is not a valid type name "
                    "(lowercase letters, digits, _; at most 32)"
                )
            if kind not in (KNOWN, ANONYMOUS):
                raise SettingsError(
                    f"setting identity.types.{name} must be 'known' or 'anonymous', got {kind!r}"
                )
        m = self.max_identifiers
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise SettingsError(f"setting identity.max_identifiers must be >= 1, got {m!r}")
        c = self.customer_id_type
        if c is not None and self.types.get(c) != KNOWN:
            raise SettingsError(
                f"setting identity.customer_id_type {c!r} must name a known identifier type"
            )

    @classmethod
    def from_settings_value(cls, value: Any) -> IdentityConfig:
        """Build from the ``identity`` setting (a mapping, or None for defaults)."""
        if value is None:
            return cls()
        if isinstance(value, IdentityConfig):
            return value
        if not isinstance(value, dict):
            raise SettingsError("setting identity must be a mapping")
        for key in value:
            if key not in _CONFIG_KEYS:
                raise SettingsError(
                    f"setting identity: unknown key {key!r}; expected one of {list(_CONFIG_KEYS)}"
                )
        types = value.get("types", DEFAULT_TYPES)
        default_cid = "account" if isinstance(types, dict) and "account" in types else None
        return cls(
            types=dict(types) if isinstance(types, dict) else types,
            max_identifiers=value.get("max_identifiers", 10),
            customer_id_type=value.get("customer_id_type", default_cid),
        )

    def is_known(self, id_type: str) -> bool:
        return self.types.get(id_type) == KNOWN

    def rank(self, id_type: str) -> int:
        """Position of a type in the config: lower is preferred."""
        return list(self.types).index(id_type)


DEFAULT_IDENTITY = IdentityConfig()


def parse_identifiers(raw: Any, field: str, config: IdentityConfig) -> dict[str, str]:
    """Validate an ``identifiers`` object; errors name ``field.<type>``."""
    if not isinstance(raw, dict):
        raise ValidationError("identifiers must be an object of type -> value", field)
    if not raw:
        raise ValidationError("identifiers must name at least one identifier", field)
    if len(raw) > config.max_identifiers:
        raise ValidationError(f"at most {config.max_identifiers} identifiers", field)
    for id_type, value in raw.items():
        if id_type not in config.types:
            raise ValidationError(
                f"unknown identifier type {id_type!r}; expected one of {sorted(config.types)}",
                f"{field}.{id_type}",
            )
        if not isinstance(value, str) or not value:
            raise ValidationError("identifier must be a non-empty string", f"{field}.{id_type}")
        if len(value) > MAX_IDENTIFIER_LEN:
            raise ValidationError(
                f"identifier is longer than {MAX_IDENTIFIER_LEN} characters", f"{field}.{id_type}"
            )
    return raw


# -- keys and ids ------------------------------------------------------------------


def identifier_key(id_type: str, value: str) -> str:
    """The identity-map key (``"cookie:abc"``); it is what picks the identity partition."""
    return f"{id_type}:{value}"


def key_type(key: str) -> str:
    return key.partition(":")[0]


def new_profile_id(id_type: str, value: str, config: IdentityConfig = DEFAULT_IDENTITY) -> str:
    """Deterministic id of a profile first seen with this identifier (see module doc)."""
    if id_type == config.customer_id_type:
        return value
    digest = hashlib.blake2b(identifier_key(id_type, value).encode(), digest_size=16).hexdigest()
    return f"{'known' if config.is_known(id_type) else 'anon'}-{digest}"
