"""The Grafana dashboard and the monitoring doc use only metrics the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from actors.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"ray_(rtim_[a-z_]+?)(?:_bucket|_count|_sum)?\b")


def _names(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_dashboard_queries_name_only_exported_metrics_and_cover_them_all() -> None:
    dash = json.loads((ROOT / "docs/grafana/rtim.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(_names(e) for e in exprs))
    assert used == set(METRIC_NAMES)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_monitoring_doc_names_only_exported_metrics() -> None:
    used = _names((ROOT / "docs/monitoring.md").read_text())
    assert used and used <= set(METRIC_NAMES)
