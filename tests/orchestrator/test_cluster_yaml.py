"""The example cluster file is a valid Ray cluster-launcher config (Ray's own schema)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_example_cluster_yaml_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "ray-cluster.example.yaml").read_text())
    validate_config(prepare_config(cfg))  # raises on any schema violation
    # GPU workers for the trials; the head only plans and drives (no GPU needed there).
    assert cfg["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"])
