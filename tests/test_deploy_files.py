"""deploy/serve.yaml and deploy/rayservice.yaml stay deployable and in step with the code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import yaml
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from models.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "deploy" / "serve.yaml"
RAYSERVICE = ROOT / "deploy" / "rayservice.yaml"


def serve_config() -> dict:
    return yaml.safe_load(SERVE.read_text())


def test_serve_config_is_a_valid_serve_deploy_config_naming_real_settings() -> None:
    cfg = serve_config()
    ServeDeploySchema.model_validate(cfg)
    # The schema lets unknown keys through: check those by name.
    for dep in cfg["applications"][0]["deployments"]:
        assert set(dep) <= set(DeploymentSchema.model_fields), dep
    settings = {f.name for f in dataclasses.fields(Settings)}
    (app,) = cfg["applications"]
    for var in app["runtime_env"]["env_vars"]:
        if var.startswith("RTIM_"):
            assert var.removeprefix("RTIM_").lower() in settings, var
    assert app["deployments"][0]["autoscaling_config"]["target_ongoing_requests"] > 0


def test_serve_config_matches_what_serve_build_makes_of_the_code(tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "serving.serve_app:app", "-o",
         str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    built = yaml.safe_load(out.read_text())["applications"][0]
    ours = serve_config()["applications"][0]
    assert ours["import_path"] == built["import_path"]
    mine = {d["name"]: d for d in ours["deployments"]}
    for dep in built["deployments"]:
        assert dep["name"] in mine, f"deployment {dep['name']} is missing from {SERVE}"
        for key, value in dep.items():
            if key != "num_replicas":  # ours autoscales instead
                assert mine[dep["name"]][key] == value, (dep["name"], key)


def test_rayservice_manifest_has_the_required_fields_and_embeds_the_serve_config() -> None:
    docs = list(yaml.safe_load_all(RAYSERVICE.read_text()))
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert svc["apiVersion"] == "ray.io/v1" and svc["metadata"]["name"]
    spec = svc["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    assert embedded["applications"] == serve_config()["applications"]
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"], "no worker group"
    data_dir = embedded["applications"][0]["runtime_env"]["env_vars"]["RTIM_DATA_DIR"]
    for group in [head, *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["containers"][0]["image"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == data_dir for m in mounts), "data directory not mounted"
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
        assert pvc["metadata"]["name"] in claims
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"]
        assert group["replicas"] <= group["maxReplicas"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
