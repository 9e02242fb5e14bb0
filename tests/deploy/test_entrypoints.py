"""Every build command the manifests run exists and accepts the config it names, and the actors
that config asks for fit the GPU nodes both cluster definitions provide.

The entrypoints are run with `--validate-only` and the network closed: nothing here talks to a
cluster, a registry or AWS.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    BUILD_MODULE, REPO, build_arguments, container, cpu_count, dockerfile_copied_paths, gpu_count, local_command,
)


def test_both_spellings_of_the_build_command_are_accepted() -> None:
    config = "configs/cluster-imagenet.yaml"
    assert build_arguments(f"python -m {BUILD_MODULE} build {config}") == [config]
    assert build_arguments(f"loupe build {config} --address auto") == [config, "--address", "auto"]
    assert local_command(f"loupe build {config}")[1:] == ["build", config]
    for wrong in (f"python -m build_atlas {config}", f"python -m jobs.build_atlas {config}", f"loupe atlas show {config}",
                  f"python -m loupe.jobs.build_atlas {config}"):
        with pytest.raises(AssertionError, match="is not a build command"):
            build_arguments(wrong)


def test_the_build_commands_exist(pyproject: dict[str, Any]) -> None:
    assert importlib.util.find_spec(BUILD_MODULE) is not None, f"{BUILD_MODULE} is not importable"
    module, _, attribute = pyproject["project"]["scripts"]["loupe"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    from loupe.jobs.cli import build_parser

    assert build_parser().parse_args(["build", "configs/cluster-imagenet.yaml"]).command == "build"


def test_entrypoint_configs_exist_beside_the_image_workdir(entrypoint_configs: list[str]) -> None:
    # Entrypoints run in the image's WORKDIR, which holds a copy of the repository's configs/.
    for config in entrypoint_configs:
        assert not Path(config).is_absolute()
        assert (REPO / config).is_file(), f"{config} does not exist in the repository"
        assert config.split("/")[0] in dockerfile_copied_paths(), f"the image does not copy {config}"


def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child that must not reach the network: any HTTP(S) or S3 attempt
    goes to a closed local port and fails, instead of leaving the machine."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("AWS_")}
    closed = "http://127.0.0.1:9"
    env.update(
        HTTP_PROXY=closed, HTTPS_PROXY=closed, http_proxy=closed, https_proxy=closed,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="none", AWS_SECRET_ACCESS_KEY="none",
        AWS_DEFAULT_REGION="us-west-2", TORCH_HOME=str(tmp_path / "torch"),
    )
    return env


def test_entrypoints_pass_validate_only_without_network(entrypoints: list[str], tmp_path: Path) -> None:
    for entrypoint in entrypoints:
        result = subprocess.run(
            [*local_command(entrypoint), "--validate-only"],
            cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, f"{entrypoint} --validate-only exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip(), "--validate-only should print a summary"
        assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth")), "weights were downloaded"


def test_entrypoint_configs_parse_under_the_config_schema(entrypoint_configs: list[str]) -> None:
    from loupe.jobs.build.config import load_config

    for config in entrypoint_configs:
        parsed = load_config(REPO / config)
        assert parsed.atlas.url.startswith("s3://"), f"{config}: a cluster build needs shared storage, not a node-local folder"


# ----------------------------------------------------------------------------------------------
# The actors the config asks for fit the GPU nodes the cluster definitions provide.


def actors_per_node(gpus: float, cpus: float, resources: Any) -> int:
    per_node = int(gpus / resources.gpus_per_actor + 1e-9)
    assert per_node >= 1, f"a node with {gpus} GPU(s) cannot hold an actor needing {resources.gpus_per_actor}"
    assert per_node * resources.cpus_per_actor <= cpus, (
        f"{per_node} actors x {resources.cpus_per_actor} CPUs do not fit a node with {cpus} CPUs"
    )
    return per_node


def test_config_actor_shape_fits_the_kuberay_gpu_workers(entrypoint_configs: list[str], rayjob: dict[str, Any]) -> None:
    from loupe.jobs.build.config import load_config

    (group,) = [g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] if gpu_count(container(g["template"])["resources"])]
    limits = container(group["template"])["resources"]["limits"]
    for config in entrypoint_configs:
        resources = load_config(REPO / config).resources
        per_node = actors_per_node(int(limits["nvidia.com/gpu"]), cpu_count(limits["cpu"]), resources)
        assert resources.actors_per_gpu * resources.gpus_per_actor <= 1
        if resources.max_actors is not None:
            assert resources.max_actors <= per_node * group["maxReplicas"], "max_actors exceeds what the worker group can hold"


def test_build_sizes_its_gpu_pool_for_clusters_that_start_without_gpu_workers(
    entrypoint_configs: list[str], rayjob: dict[str, Any], ray_up: dict[str, Any]
) -> None:
    """Both cluster definitions start with the head alone (no CPUs for work, no GPUs) and let Ray's
    autoscaler add GPU workers for pending actors, so when the build sizes its actor pool the
    cluster shows no GPU yet: it must still ask for its GPU actors, not fail or fall back to CPUs."""
    from loupe.jobs.build.config import load_config
    from loupe.jobs.build.execute import actor_shape

    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert all(g["minReplicas"] == 0 for g in cluster["workerGroupSpecs"])
    head = ray_up["available_node_types"][ray_up["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    at_submission = {"CPU": 0.0, "memory": 8e9, "object_store_memory": 2e9}
    for config in entrypoint_configs:
        resources = load_config(REPO / config).resources
        try:
            shape = actor_shape(resources, at_submission, 10_000)
        except Exception as exc:
            pytest.fail(f"{config}: a build on a cluster whose GPU workers are still at zero fails: {exc}")
        assert shape.num_gpus > 0, f"{config}: the build would run on CPUs on a GPU cluster"
        assert shape.count == resources.max_actors, f"{config}: {shape.count} actors instead of max_actors"


def test_config_actor_shape_fits_the_ray_up_gpu_workers(entrypoint_configs: list[str], ray_up: dict[str, Any]) -> None:
    from loupe.jobs.build.config import load_config

    gpu_types = [t for t in ray_up["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "the ray up config has no GPU node type"
    for config in entrypoint_configs:
        resources = load_config(REPO / config).resources
        for node_type in gpu_types:
            per_node = actors_per_node(node_type["resources"]["GPU"], node_type["resources"]["CPU"], resources)
            if resources.max_actors is not None:
                assert resources.max_actors <= per_node * node_type["max_workers"]
