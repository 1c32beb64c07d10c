"""Server settings, in one place: defaults, an optional YAML file, environment.

Precedence, lowest first: the defaults below, the YAML file named by
``--config`` or ``RTIM_CONFIG``, then ``RTIM_<FIELD>`` environment variables
(e.g. ``RTIM_SHARDS=4``), then command-line options. Every value is checked
once, here, with a message naming the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DEMO_DIR = Path(__file__).resolve().parent / "demo"


class SettingsError(ValueError):
    """A setting has a wrong value; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything an operator can tune. See README, "Configuration"."""

    host: str = "127.0.0.1"
    port: int = 8000
    shards: int = 0  # 0 = one per CPU that Ray sees
    partitions: int = 256
    move_partitions: int = 8  # partitions per hand-off when scaling (one hand-off at a time)
    move_pause_s: float = 0.0  # pause after each hand-off step (tests and demos only)
    ingress_replicas: int = 1
    ingress_mode: str = "haproxy"  # "haproxy" (Serve direct ingress) or "proxy"
    max_body_bytes: int = 1 << 20
    max_batch_events: int = 1000
    max_batch_decisions: int = 1000
    max_decide_limit: int = 20
    max_future_skew_s: float = 300.0
    session_gap_s: float = 1800.0
    data_dir: str = "var"
    fsync: str = "always"  # always | batch | off (see README, Operations)
    fsync_interval_s: float = 0.05  # with fsync=batch: at most this long unsynced
    snapshot_interval_s: float = 300.0
    snapshot_journal_bytes: int = 64 << 20  # snapshot sooner once the journal is this big
    catalog: str = str(DEMO_DIR / "catalog.yaml")
    model_registry: str = str(DEMO_DIR / "registry")
    model_version: str = ""  # "" = newest version in the registry
    decision_log_size: int = 10000  # decisions kept in memory per shard
    shard_call_timeout_s: float = 10.0
    decide_deadline_ms: float = 50.0  # default decide deadline; then the fallback answers
    max_inflight_per_replica: int = 1024  # requests in one ingress replica; then 503
    max_inflight_per_shard: int = 256  # calls from one replica to one shard; then 503
    coalesce_max_batch: int = 64  # decide requests per shard call
    coalesce_max_calls: int = 1  # decide calls in flight per shard per replica (README)
    # HAProxy lets at most this many decides into one replica at once; more wait in
    # HAProxy's queue up to half of decide_deadline_ms, then 503 (README, Decide). 0 = off.
    edge_decide_maxconn: int = 32
    shard_wire: bool = True  # same-node replicas send hot calls over a Unix socket (README)
    identity: dict = field(default_factory=dict)  # identifier types and limits (README)
    # An ingress replica trusts a cached identifier lookup for at most this long;
    # shards keep erasure tombstones for twice that (see README, Recognition).
    identity_cache_ttl_s: float = 300.0
    auth: bool = True  # API keys required (see docs/security.md); off only on loopback
    client_timeout_s: int = 30  # HAProxy closes a client idle this long mid-request
    # Prometheus scrapes Ray's metrics agent here (embedded Ray; 0 = Ray picks a port).
    metrics_export_port: int = 0
    # Adaptive models: each shard pulls the others' evidence this often (README, Learning).
    learning_merge_interval_s: float = 2.0
    # Report counters: hourly buckets kept per shard (docs/reports.md, Retention).
    report_retention_h: int = 24 * 31
    # Interaction history (docs/history.md): per-shard JSONL files under data_dir.
    history: bool = True  # write the interaction history at all
    history_context: bool = True  # rows carry the profile and request (for evaluation)
    history_file_bytes: int = 64 << 20  # rotate the open file at this size ...
    history_file_s: float = 3600.0  # ... or age
    history_retention_days: float = 0.0  # delete rotated files older than this; 0 = keep
    history_fallback_queue: int = 10000  # fallback rows an ingress replica holds for shards

    def __post_init__(self) -> None:
        positive = (
            "port", "partitions", "ingress_replicas", "max_body_bytes", "max_batch_events",
            "max_batch_decisions", "max_decide_limit", "session_gap_s", "decision_log_size",
            "shard_call_timeout_s", "snapshot_interval_s", "snapshot_journal_bytes",
            "identity_cache_ttl_s", "decide_deadline_ms", "max_inflight_per_replica",
            "max_inflight_per_shard", "coalesce_max_batch", "coalesce_max_calls",
            "move_partitions",
            "client_timeout_s",
            "learning_merge_interval_s", "report_retention_h", "history_file_bytes",
            "history_file_s", "history_fallback_queue",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"setting {name} must be > 0, got {getattr(self, name)!r}")
        if self.history_retention_days < 0:
            raise SettingsError("setting history_retention_days must be >= 0 (0 = keep)")
        if self.edge_decide_maxconn < 0:
            raise SettingsError("setting edge_decide_maxconn must be >= 0 (0 = off)")
        if self.move_pause_s < 0:
            raise SettingsError("setting move_pause_s must be >= 0")
        if self.shards < 0:
            raise SettingsError("setting shards must be >= 0 (0 = one per CPU)")
        if self.shards and self.shards > self.partitions:
            raise SettingsError("setting shards must not exceed partitions")
        if self.fsync not in ("always", "batch", "off"):
            raise SettingsError("setting fsync must be 'always', 'batch' or 'off'")
        if self.ingress_mode not in ("haproxy", "proxy"):
            raise SettingsError("setting ingress_mode must be 'haproxy' or 'proxy'")
        if not 0 < self.port < 65536:
            raise SettingsError("setting port must be 1..65535")
        if not 0 <= self.metrics_export_port < 65536:
            raise SettingsError("setting metrics_export_port must be 0..65535")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        return cls(**data)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, dict):
            if not isinstance(raw, dict):
                raise TypeError
            return raw
        return str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name}: cannot use {raw!r}") from None


def load_settings(
    config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Defaults ← YAML file ← ``RTIM_*`` environment ← ``overrides``."""
    defaults = Settings()
    known = {f.name: getattr(defaults, f.name) for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("RTIM_CONFIG")
    if path:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must hold a mapping")
        for key, raw in data.items():
            if key not in known:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, known[key])
    for key, default in known.items():
        env = os.environ.get(f"RTIM_{key.upper()}")
        if env is not None:
            values[key] = _coerce(key, env, default)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in known:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _coerce(key, raw, known[key])
    return Settings(**{**known, **values})
