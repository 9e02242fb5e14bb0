"""deploy/ray-cluster-aws.yaml: Ray's schema, and the defaults-filling `ray up` does before launching."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any


def test_ray_up_config_matches_rays_schema(ray_up: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(ray_up, schema)
    assert ray_up["provider"]["type"] == "aws" and ray_up["provider"]["region"]
    assert ray_up["head_node_type"] in ray_up["available_node_types"]
    assert isinstance(ray_up["max_workers"], int)


def test_ray_up_config_survives_ray_ups_own_preparation(ray_up: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(ray_up)
    validate_config(prepared)
    workers = [name for name in prepared["available_node_types"] if name != prepared["head_node_type"]]
    assert sum(prepared["available_node_types"][w]["max_workers"] for w in workers) >= 1


def test_ray_up_start_commands_use_only_options_ray_start_has(ray_up: dict[str, Any]) -> None:
    from ray.scripts.scripts import start

    commands = ray_up["head_start_ray_commands"] + ray_up["worker_start_ray_commands"]
    starts = [c.split("ray start", 1)[1].split(";")[0] for c in commands if "ray start" in c]
    assert len(starts) == 2
    for arguments in starts:
        context = start.make_context("start", shlex.split(arguments))  # raises on an unknown option
        assert context.params["head"] == ("--head" in arguments)


def test_ray_up_nodes_reach_s3_through_instance_profiles_and_require_a_token(ray_up: dict[str, Any]) -> None:
    for name, node_type in ray_up["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", profile.get("Arn", "")), name
    assert "~/.ray/auth_token" in ray_up["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in ray_up[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
