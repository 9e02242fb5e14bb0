"""The deploy/ files and the configs they run: they parse, carry the fields their tools require,
agree with each other, and every command they run exists and accepts the config it names.

Nothing here talks to a cluster, a registry or AWS: the KubeRay and Kubernetes manifests are
checked for the fields their API versions require and for agreeing with each other, the `ray up`
config against Ray's own schema and the preparation `ray up` does before launching anything, and
the build entrypoints by running them with `--validate-only` with the network closed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
RAY_UP_CONFIG = DEPLOY / "ray-cluster-aws.yaml"
BUILD_MODULE = "loupe.jobs.build_atlas"

YAML_FILES = sorted(p for folder in (DEPLOY, REPO / "configs") for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))
NAMESPACE = "loupe"
CLUSTER_SCOPED_KINDS = {"Namespace"}


class StrictLoader(yaml.SafeLoader):
    """Safe YAML that rejects a key repeated in one mapping, as kubectl's strict decoding does
    (PyYAML would silently keep the last value)."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_docs(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return parse_docs(path.read_text())


def the_doc(path: Path, kind: str) -> dict[str, Any]:
    docs = [doc for doc in load_docs(path) if doc.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return the_doc(KUBERAY / "rayjob.yaml", "RayJob")


@pytest.fixture(scope="module")
def raycronjob() -> dict[str, Any]:
    return the_doc(KUBERAY / "raycronjob.yaml", "RayCronJob")


@pytest.fixture(scope="module")
def cronjob_docs() -> dict[str, dict[str, Any]]:
    docs = load_docs(KUBERAY / "cronjob.yaml")
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == sorted(set(kinds)), f"cronjob.yaml repeats a kind: {kinds}"
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def scheduled_rayjob(cronjob_docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The RayJob manifest the CronJob's pod creates, as stored in its ConfigMap."""
    data = cronjob_docs["ConfigMap"]["data"]
    assert list(data) == ["rayjob.yaml"]
    (manifest,) = parse_docs(data["rayjob.yaml"])
    return manifest


@pytest.fixture(scope="module")
def ray_up() -> dict[str, Any]:
    (config,) = load_docs(RAY_UP_CONFIG)
    return config


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# ----------------------------------------------------------------------------------------------
# Every YAML file parses, and the Kubernetes ones are well-formed objects.


def test_the_deploy_files_exist() -> None:
    names = {rel(p) for p in YAML_FILES}
    assert {
        "configs/cluster-imagenet.yaml",
        "deploy/ray-cluster-aws.yaml",
        "deploy/kuberay/rayjob.yaml",
        "deploy/kuberay/raycronjob.yaml",
        "deploy/kuberay/cronjob.yaml",
        "deploy/kuberay/serviceaccount.yaml",
    } <= names
    assert DOCKERFILE.is_file() and (DEPLOY / "Dockerfile.dockerignore").is_file()


def test_duplicate_keys_are_parse_errors() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'image'"):
        parse_docs("containers:\n  - image: a\n    image: b\n")


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses_to_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{rel(path)} holds no document"
    for index, doc in enumerate(docs):
        assert isinstance(doc, dict), f"{rel(path)} document {index} is a {type(doc).__name__}, not a mapping"


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=rel)
def test_kubernetes_objects_are_complete_and_share_a_namespace(path: Path) -> None:
    for doc in load_docs(path):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{rel(path)}: {doc.get('kind')} lacks a header field"
        meta = doc["metadata"]
        assert meta.get("name"), f"{rel(path)}: a {doc['kind']} has no metadata.name"
        expected = None if doc["kind"] in CLUSTER_SCOPED_KINDS else NAMESPACE
        assert meta.get("namespace") == expected, f"{rel(path)}: {doc['kind']} {meta['name']} is in namespace {meta.get('namespace')!r}"


# ----------------------------------------------------------------------------------------------
# The RayJob: one build on a fresh cluster that is removed afterwards.


def container(pod_template: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return pod_template["spec"]["containers"][index]


def gpu_count(resources: dict[str, Any]) -> int:
    return int(resources.get("limits", {}).get("nvidia.com/gpu", 0))


def cpu_count(quantity: Any) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_runs_the_build_and_cleans_up(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert shlex.split(spec["entrypoint"])[:3] == ["python", "-m", BUILD_MODULE]
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


def test_the_head_works_in_the_directory_the_image_installs_to(rayjob: dict[str, Any]) -> None:
    head = container(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    assert head.get("workingDir") == dockerfile_workdir()


# ----------------------------------------------------------------------------------------------
# Scheduled rebuilds: the RayCronJob and the CronJob run exactly the standalone RayJob.


def test_raycronjob_schedules_the_standalone_rayjob(raycronjob: dict[str, Any], rayjob: dict[str, Any]) -> None:
    assert raycronjob["apiVersion"] == "ray.io/v1"
    spec = raycronjob["spec"]
    # KubeRay 1.6's RayCronJob has only these fields; kubectl's strict validation rejects others.
    assert set(spec) <= {"schedule", "jobTemplate", "suspend"}
    assert isinstance(spec.get("suspend", False), bool)
    assert cron_fields(spec["schedule"])
    assert spec["jobTemplate"] == rayjob["spec"], "raycronjob.yaml's jobTemplate drifted from rayjob.yaml's spec"


def test_raycronjob_runs_cannot_overlap(raycronjob: dict[str, Any]) -> None:
    """It has no concurrency policy, so a build's deadline must end it before the next run."""
    deadline = timedelta(seconds=raycronjob["spec"]["jobTemplate"]["activeDeadlineSeconds"])
    assert shortest_gap(raycronjob["spec"]["schedule"]) > deadline


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


# ----------------------------------------------------------------------------------------------
# Cron schedules: five fields with valid values (checked here, as the cluster would on apply).

CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_NAMES = [{}, {}, {}, {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)},
              {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}]


def cron_fields(schedule: str) -> list[set[int]]:
    """Parse a standard five-field cron expression into the allowed values of each field."""
    fields = schedule.split()
    assert len(fields) == 5, f"cron schedule {schedule!r} has {len(fields)} fields, not 5"
    parsed = []
    for text, (low, high), names in zip(fields, CRON_RANGES, CRON_NAMES):
        values: set[int] = set()
        for part in text.lower().split(","):
            base, _, step_text = part.partition("/")
            step = int(step_text) if step_text else 1
            assert step >= 1, f"bad step in {schedule!r}"
            if base == "*":
                start, stop = low, high
            else:
                bounds = [names[b] if b in names else int(b) for b in base.split("-")]
                start, stop = bounds[0], bounds[-1]
                if step_text and len(bounds) == 1:
                    stop = high
            assert low <= start <= stop <= high, f"{part!r} is out of range {low}-{high} in {schedule!r}"
            values.update(range(start, stop + 1, step))
        parsed.append(values)
    parsed[4] = {d % 7 for d in parsed[4]}
    return parsed


def cron_times(schedule: str, start: datetime, minutes: int) -> Iterator[datetime]:
    minute, hour, dom, month, dow = cron_fields(schedule)
    dom_any, dow_any = schedule.split()[2] == "*", schedule.split()[4] == "*"
    for offset in range(minutes):
        t = start + timedelta(minutes=offset)
        day_dom, day_dow = t.day in dom, (t.isoweekday() % 7) in dow
        day_ok = (day_dom and day_dow) if (dom_any or dow_any) else (day_dom or day_dow)
        if t.minute in minute and t.hour in hour and t.month in month and day_ok:
            yield t


def shortest_gap(schedule: str) -> timedelta:
    times = list(cron_times(schedule, datetime(2025, 1, 1), 60 * 24 * 62))
    assert len(times) >= 2, f"{schedule!r} fires less than twice in two months"
    return min(b - a for a, b in zip(times, times[1:]))


def test_cron_parser_rejects_bad_schedules() -> None:
    for bad in ("0 3 * *", "60 3 * * *", "0 24 * * *", "0 3 0 * *", "0 3 * 13 *", "0 3 * * 8"):
        with pytest.raises(AssertionError):
            cron_fields(bad)
    assert shortest_gap("0 3 * * *") == timedelta(days=1)
    assert shortest_gap("*/15 * * * *") == timedelta(minutes=15)
    assert shortest_gap("0 3 * * 1,4") == timedelta(days=3)


# ----------------------------------------------------------------------------------------------
# Every command the manifests run exists and accepts the config it names.


@pytest.fixture(scope="module")
def entrypoint_configs(rayjob: dict[str, Any], raycronjob: dict[str, Any], scheduled_rayjob: dict[str, Any]) -> list[str]:
    """The config file named by every build entrypoint the manifests run."""
    configs = []
    for entrypoint in (
        rayjob["spec"]["entrypoint"], raycronjob["spec"]["jobTemplate"]["entrypoint"], scheduled_rayjob["spec"]["entrypoint"]
    ):
        argv = shlex.split(entrypoint)
        assert argv[:3] == ["python", "-m", BUILD_MODULE], entrypoint
        positional = [a for a in argv[3:] if not a.startswith("-")]
        assert len(positional) == 1, f"{entrypoint!r} should name exactly one config"
        configs.append(positional[0])
    return sorted(set(configs))


def test_entrypoint_configs_exist_beside_the_image_workdir(entrypoint_configs: list[str]) -> None:
    # Entrypoints run in the image's WORKDIR, which holds a copy of the repository's configs/.
    for config in entrypoint_configs:
        assert not Path(config).is_absolute()
        assert (REPO / config).is_file(), f"{config} does not exist in the repository"
        assert config.split("/")[0] in dockerfile_copied_paths(), f"the image does not copy {config}"


def test_the_build_module_exists() -> None:
    assert importlib.util.find_spec(BUILD_MODULE) is not None, f"{BUILD_MODULE} is not importable"


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


def test_entrypoint_configs_pass_validate_only_without_network(entrypoint_configs: list[str], tmp_path: Path) -> None:
    for config in entrypoint_configs:
        result = subprocess.run(
            [sys.executable, "-m", BUILD_MODULE, config, "--validate-only"],
            cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, f"{config} --validate-only exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip(), "--validate-only should print a summary"
        assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth")), "weights were downloaded"


def test_entrypoint_configs_parse_under_the_config_schema(entrypoint_configs: list[str]) -> None:
    from loupe.jobs.config import load_config

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
    from loupe.jobs.config import load_config

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
    from loupe.jobs.config import load_config
    from loupe.jobs.execute import actor_shape

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
    from loupe.jobs.config import load_config

    gpu_types = [t for t in ray_up["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "the ray up config has no GPU node type"
    for config in entrypoint_configs:
        resources = load_config(REPO / config).resources
        for node_type in gpu_types:
            per_node = actors_per_node(node_type["resources"]["GPU"], node_type["resources"]["CPU"], resources)
            if resources.max_actors is not None:
                assert resources.max_actors <= per_node * node_type["max_workers"]


# ----------------------------------------------------------------------------------------------
# The image: what it copies exists, gets past the ignore file, and installs the project.


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_copies() -> list[tuple[list[str], str]]:
    copies = []
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copies.append((parts[:-1], parts[-1]))
    return copies


def dockerfile_copied_paths() -> set[str]:
    return {Path(source).parts[0] for sources, _ in dockerfile_copies() for source in sources}


def dockerfile_workdir() -> str:
    workdirs = [rest for word, rest in dockerfile_instructions() if word == "WORKDIR"]
    assert len(workdirs) == 1
    return workdirs[0]


def test_dockerfile_builds_on_a_ray_gpu_image_matching_the_project() -> None:
    instructions = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in instructions if word == "ARG" and "=" in rest}
    (base,) = [rest for word, rest in instructions if word == "FROM"]
    image = args.get(base.strip("${}"), base)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert match, f"base image {image!r} is not a CUDA rayproject/ray image"
    installed = importlib.import_module("ray").__version__
    assert match.group(1).split(".")[:2] == installed.split(".")[:2], f"image Ray {match.group(1)} vs installed {installed}"
    assert f"{match.group(2)}.{match.group(3)}" == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_dockerfile_copies_what_pip_install_needs_before_installing(pyproject: dict[str, Any]) -> None:
    copied_before_install: set[str] = set()
    installed = False
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not installed:
            sources = [p for p in shlex.split(rest) if not p.startswith("--")][:-1]
            copied_before_install.update(Path(s).parts[0] for s in sources)
        if word == "RUN" and re.search(r"\bpip install (\S+)", rest):
            installed = True
    assert installed, "the Dockerfile never runs `pip install`"
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", pyproject["project"]["readme"], *packages} <= copied_before_install


def test_every_copied_path_exists_and_passes_the_dockerignore() -> None:
    rules = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    for sources, _ in dockerfile_copies():
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert not dockerignored(source, rules), f"COPY {source} is excluded by Dockerfile.dockerignore"
    for heavy in (".venv", ".git", "tests", "atlas", "loupe.egg-info"):
        assert dockerignored(heavy, rules), f"{heavy} would be sent to the Docker daemon"


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        pattern = dockerignore_regex(rule.removeprefix("!").rstrip("/"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not rule.startswith("!")
    return ignored


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**/` spans folders, `*` and `?` stay within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_dockerfile_runs_unprivileged_and_holds_no_secrets() -> None:
    instructions = dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", rest, re.I), f"{word} {rest} looks like a credential"


def test_dockerfile_cmd_is_an_installed_console_script(pyproject: dict[str, Any]) -> None:
    (cmd,) = [rest for word, rest in dockerfile_instructions() if word == "CMD"]
    argv = yaml.safe_load(cmd)
    target = pyproject["project"]["scripts"][argv[0]]
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_weights_the_image_can_preload_resolve_offline(entrypoint_configs: list[str]) -> None:
    """The optional preload step calls get_model_weights(<builder>).DEFAULT.get_state_dict."""
    import torchvision

    from loupe.jobs.config import load_config

    run = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert "get_model_weights(sys.argv[1]).DEFAULT.get_state_dict" in run
    for config in entrypoint_configs:
        for model in load_config(REPO / config).models:
            if model.source.startswith("torchvision:") and model.weights == "DEFAULT":
                weights = torchvision.models.get_model_weights(model.source.split(":", 1)[1]).DEFAULT
                assert callable(weights.get_state_dict) and weights.url.startswith("https://")


# ----------------------------------------------------------------------------------------------
# One image and one Ray version everywhere.


def test_every_manifest_runs_the_same_loupe_image(
    rayjob: dict[str, Any], raycronjob: dict[str, Any], scheduled_rayjob: dict[str, Any], ray_up: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    images = {ray_up["docker"]["image"]}
    for spec in (rayjob["spec"], raycronjob["spec"]["jobTemplate"], scheduled_rayjob["spec"]):
        cluster = spec["rayClusterSpec"]
        for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
            images.update(c["image"] for c in template["spec"]["containers"])
    assert len(images) == 1, f"different images: {sorted(images)}"
    (image,) = images
    assert image.rsplit(":", 1)[1] == pyproject["project"]["version"], "tag the image with the project version"


def test_rayversion_matches_the_image(rayjob: dict[str, Any]) -> None:
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest}
    image_version = args["RAY_IMAGE"].split(":")[1].split("-")[0]
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == image_version


# ----------------------------------------------------------------------------------------------
# The `ray up` config: Ray's schema, and the defaults-filling `ray up` does before launching.


def test_ray_up_config_matches_rays_schema(ray_up: dict[str, Any]) -> None:
    import json

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


# ----------------------------------------------------------------------------------------------
# The deploy guide points at files that exist.


def test_deploy_guide_names_only_existing_files() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|configs|docs|tests|jobs|benchmarks)/[\w./-]*\w)", text))
    assert paths, "docs/deploy.md names no repository file"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/deploy.md names missing files: {missing}"
