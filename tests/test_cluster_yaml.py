"""cluster.yaml is a valid Ray cluster-launcher config."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema() -> None:
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(load(), schema)


def test_cluster_yaml_has_head_and_workers_and_deploys_the_app() -> None:
    cfg = load()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(name != cfg["head_node_type"] for name in types)
    assert any("pip install" in c and "rtim" in c for c in cfg["setup_commands"])
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "rtim serve --address auto" in head
    assert "rtim scale --shards" in head
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
