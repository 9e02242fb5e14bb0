"""deploy/kuberay/cronjob.yaml: a plain Kubernetes CronJob whose pod creates the standalone RayJob
from a ConfigMap and waits for it, with an account allowed to do only that."""

from __future__ import annotations

from typing import Any

from tests.deploy.cron import cron_fields
from tests.deploy.manifests import NAMESPACE


def test_cronjob_forbids_overlap_and_creates_the_standalone_rayjob(
    cronjob_docs: dict[str, dict[str, Any]], scheduled_rayjob: dict[str, Any], rayjob: dict[str, Any]
) -> None:
    cronjob = cronjob_docs["CronJob"]
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert cron_fields(spec["schedule"])
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a rerun pod would create a second RayJob"
    assert job["template"]["spec"]["restartPolicy"] == "Never"

    assert scheduled_rayjob["apiVersion"] == rayjob["apiVersion"] and scheduled_rayjob["kind"] == "RayJob"
    assert scheduled_rayjob["spec"] == rayjob["spec"], "the ConfigMap's RayJob drifted from rayjob.yaml's spec"
    meta = scheduled_rayjob["metadata"]
    assert "name" not in meta and meta["generateName"].endswith("-"), "each run needs a fresh name"
    assert meta["namespace"] == cronjob["metadata"]["namespace"]


def test_cronjob_pod_creates_the_configmap_manifest_then_waits_for_that_build(
    cronjob_docs: dict[str, dict[str, Any]], scheduled_rayjob: dict[str, Any], rayjob: dict[str, Any]
) -> None:
    job = cronjob_docs["CronJob"]["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (create,) = pod["initContainers"]
    assert create["image"].startswith("registry.k8s.io/kubectl:")
    verb, flag, manifest = create["args"]
    assert (verb, flag) == ("create", "-f")
    assert manifest_from_configmap(pod, create, manifest, cronjob_docs["ConfigMap"]) == "rayjob.yaml"

    (wait,) = pod["containers"]
    args = wait["args"]
    assert args[:2] == ["wait", "rayjobs"]
    options = dict(arg.split("=", 1) for arg in args[2:])
    selector = dict(term.split("=", 1) for term in options["--selector"].split(","))
    labels = scheduled_rayjob["metadata"]["labels"]
    assert selector.items() <= labels.items(), "the wait would not see the RayJob the pod creates"
    assert not selector.items() <= rayjob["metadata"]["labels"].items(), "the wait would also wait for manual runs"
    assert options["--for"] == "jsonpath={.status.endTime}"
    wait_seconds = int(options["--timeout"].removesuffix("s"))
    assert scheduled_rayjob["spec"]["activeDeadlineSeconds"] < wait_seconds < job["activeDeadlineSeconds"]


def test_cronjob_account_may_only_create_and_follow_rayjobs(cronjob_docs: dict[str, dict[str, Any]]) -> None:
    account = cronjob_docs["ServiceAccount"]["metadata"]["name"]
    pod = cronjob_docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    role, binding = cronjob_docs["Role"], cronjob_docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "watch"]}]


def manifest_from_configmap(pod: dict[str, Any], container_spec: dict[str, Any], path: str, configmap: dict[str, Any]) -> str:
    """The ConfigMap key a container sees at `path`, following its volume mounts."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container_spec["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        source = volumes[mount["name"]]["configMap"]
        assert source["name"] == configmap["metadata"]["name"]
        relative = path[len(prefix):]
        for item in source.get("items", [{"key": k, "path": k} for k in configmap["data"]]):
            if item["path"] == relative:
                assert item["key"] in configmap["data"]
                return item["key"]
    raise AssertionError(f"{path} is not a file from the ConfigMap in the container {container_spec['name']}")
