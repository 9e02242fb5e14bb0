"""deploy/kuberay/rayjob.yaml: one build on a fresh cluster that is removed afterwards."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.manifests import KUBERAY, build_arguments, container, dockerfile_workdir, gpu_count, load_docs


def test_rayjob_runs_the_build_and_cleans_up(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert build_arguments(spec["entrypoint"]), "the entrypoint names no config"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def test_rayjob_has_a_cpu_head_and_an_autoscaled_gpu_worker_group(rayjob: dict[str, Any]) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}, "Ray clusters must require a token"
    head = cluster["headGroupSpec"]
    assert gpu_count(container(head["template"])["resources"]) == 0, "the head runs the driver, not GPU work"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values must be strings"
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups if gpu_count(container(g["template"])["resources"]) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        resources = container(group["template"])["resources"]
        assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
    if any(g["minReplicas"] < g["maxReplicas"] for g in groups):
        assert cluster.get("enableInTreeAutoscaling") is True, "replica ranges need the Ray autoscaler"


def test_ray_pods_run_as_the_irsa_service_account(rayjob: dict[str, Any]) -> None:
    accounts = {
        doc["metadata"]["name"]: doc for doc in load_docs(KUBERAY / "serviceaccount.yaml") if doc["kind"] == "ServiceAccount"
    }
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        name = template["spec"].get("serviceAccountName")
        assert name in accounts, f"pod template uses service account {name!r}, which serviceaccount.yaml does not define"
        role = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role), role


def test_the_head_works_in_the_images_working_directory_where_configs_are(rayjob: dict[str, Any]) -> None:
    head = container(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    assert head.get("workingDir") == dockerfile_workdir()
