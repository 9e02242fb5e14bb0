"""The parsed deploy files, shared by the per-manifest test modules."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.deploy.manifests import KUBERAY, RAY_UP_CONFIG, REPO, build_arguments, load_docs, parse_docs, the_doc


@pytest.fixture(scope="session")
def rayjob() -> dict[str, Any]:
    return the_doc(KUBERAY / "rayjob.yaml", "RayJob")


@pytest.fixture(scope="session")
def raycronjob() -> dict[str, Any]:
    return the_doc(KUBERAY / "raycronjob.yaml", "RayCronJob")


@pytest.fixture(scope="session")
def cronjob_docs() -> dict[str, dict[str, Any]]:
    docs = load_docs(KUBERAY / "cronjob.yaml")
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == sorted(set(kinds)), f"cronjob.yaml repeats a kind: {kinds}"
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="session")
def scheduled_rayjob(cronjob_docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The RayJob manifest the CronJob's pod creates, as stored in its ConfigMap."""
    data = cronjob_docs["ConfigMap"]["data"]
    assert list(data) == ["rayjob.yaml"]
    (manifest,) = parse_docs(data["rayjob.yaml"])
    return manifest


@pytest.fixture(scope="session")
def ray_up() -> dict[str, Any]:
    (config,) = load_docs(RAY_UP_CONFIG)
    return config


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def entrypoints(rayjob: dict[str, Any], raycronjob: dict[str, Any], scheduled_rayjob: dict[str, Any]) -> list[str]:
    """Every distinct build entrypoint the KubeRay manifests run."""
    return sorted({
        rayjob["spec"]["entrypoint"], raycronjob["spec"]["jobTemplate"]["entrypoint"], scheduled_rayjob["spec"]["entrypoint"],
    })


@pytest.fixture(scope="session")
def entrypoint_configs(entrypoints: list[str]) -> list[str]:
    """The config file named by every build entrypoint the manifests run."""
    configs = []
    for entrypoint in entrypoints:
        positional = [a for a in build_arguments(entrypoint) if not a.startswith("-")]
        assert len(positional) == 1, f"{entrypoint!r} should name exactly one config"
        configs.append(positional[0])
    return sorted(set(configs))
