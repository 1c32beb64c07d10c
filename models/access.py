"""API keys: who may call what, stored hashed in ``<data_dir>/keys.json``.

A secret looks like ``rtim_<id>_<random>``. The id finds the key with one
dict lookup; the secret is then checked against an HMAC-SHA256 of it under
the key's own salt, compared in constant time. Only the salt and the hash
are stored, so a copy of the file does not let anyone call the server.

The file is written atomically (temporary file, fsync, rename) with mode
0600 by ``rtim keys`` and read by every ingress replica, which looks at it
again at most once a second: a revoked key stops working within seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.atomic_file import replace_file
from models.errors import ValidationError

SCOPES = ("decide", "events:write", "profiles:read", "profiles:erase", "reports:read", "admin")
KEYS_FILE = "keys.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_SECRET = re.compile(r"rtim_([0-9a-f]{12})_([A-Za-z0-9_-]{20,64})\Z")


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key: its name, scopes, rate limit and the salted hash of its secret."""

    name: str
    key_id: str
    salt: str
    digest: str
    scopes: tuple[str, ...]
    created: float
    rps: float = 0.0  # 0 = no rate limit
    burst: int = 0
    revoked: float | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)

    def public(self) -> dict[str, Any]:
        """What ``rtim keys list`` and the audit trail show (never salt or hash)."""
        return {
            "name": self.name,
            "id": self.key_id,
            "scopes": list(self.scopes),
            "rps": self.rps,
            "burst": self.burst,
            "created": self.created,
            "revoked": self.revoked,
        }


def parse_scopes(raw: str | list[str]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValidationError(f"scopes must be some of {list(SCOPES)}, got {unknown or 'none'}")
    return scopes


@dataclass
class KeyTable:
    """The keys in force, by id (revoked keys are kept for the listing only)."""

    keys: list[ApiKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {k.key_id: k for k in self.keys if k.revoked is None}

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key this secret belongs to, or ``None``."""
        m = _SECRET.match(secret)
        key = self.by_id.get(m.group(1)) if m else None
        return key if key is not None and key.matches(secret) else None

    def to_dict(self) -> dict[str, Any]:
        return {"format": "rtim-keys/1", "keys": [asdict(k) for k in self.keys]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyTable:
        keys = [ApiKey(**{**k, "scopes": tuple(k["scopes"])}) for k in data.get("keys", [])]
        return cls(keys)


class KeyStore:
    """The key file of one data directory: read, create, revoke."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / KEYS_FILE

    def load(self) -> KeyTable:
        try:
            return KeyTable.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return KeyTable()

    def signature(self) -> tuple[int, int] | None:
        """Changes whenever the file is replaced (for cheap polling)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def create(
        self, name: str, scopes: str | list[str], rps: float = 0.0, burst: int = 0
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once; only its hash is kept)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationError("key name: letters, digits, '.', '_' or '-', 1..64", "name")
        if rps < 0 or burst < 0:
            raise ValidationError("rps and burst must be >= 0", "rps")
        table = self.load()
        if any(k.name == name and k.revoked is None for k in table.keys):
            raise ValidationError(f"a live key named {name!r} exists; revoke it first", "name")
        key_id = secrets.token_hex(6)
        secret = f"rtim_{key_id}_{secrets.token_urlsafe(32)}"
        salt = secrets.token_hex(16)
        key = ApiKey(
            name, key_id, salt, _digest(salt, secret), parse_scopes(scopes), time.time(),
            float(rps), int(burst) if burst else (max(1, int(rps)) if rps else 0),
        )  # fmt: skip
        self._save(KeyTable([*table.keys, key]))
        return key, secret

    def revoke(self, name: str) -> ApiKey:
        table = self.load()
        live = [k for k in table.keys if k.name == name and k.revoked is None]
        if not live:
            raise ValidationError(f"no live key named {name!r}", "name")
        now = time.time()
        keys = [replace(k, revoked=now) if k in live else k for k in table.keys]
        self._save(KeyTable(keys))
        return replace(live[0], revoked=now)

    def _save(self, table: KeyTable) -> None:
        replace_file(self.path, json.dumps(table.to_dict(), indent=1).encode(), mode=0o600)
