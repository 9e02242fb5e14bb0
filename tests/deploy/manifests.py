"""Shared readers for the deploy/ files: strict YAML, pod-template accessors, the Dockerfile's
instructions and the build command a manifest runs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
RAY_UP_CONFIG = DEPLOY / "ray-cluster-aws.yaml"
BUILD_MODULE = "loupe"
#: The two spellings of the build command an entrypoint may use (the second is the console script).
BUILD_COMMANDS = (("python", "-m", BUILD_MODULE, "build"), ("loupe", "build"))

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


# ----------------------------------------------------------------------------------------------
# Pod templates.


def container(pod_template: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return pod_template["spec"]["containers"][index]


def gpu_count(resources: dict[str, Any]) -> int:
    return int(resources.get("limits", {}).get("nvidia.com/gpu", 0))


def cpu_count(quantity: Any) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ----------------------------------------------------------------------------------------------
# The build command an entrypoint runs.


def build_arguments(entrypoint: str) -> list[str]:
    """The arguments after the build command, for either spelling; fails on any other command."""
    argv = shlex.split(entrypoint)
    for command in BUILD_COMMANDS:
        if tuple(argv[: len(command)]) == command:
            return argv[len(command):]
    spellings = " or ".join(f"`{' '.join(c)} CONFIG`" for c in BUILD_COMMANDS)
    raise AssertionError(f"entrypoint {entrypoint!r} is not a build command: expected {spellings}")


def local_command(entrypoint: str) -> list[str]:
    """The entrypoint as this machine runs it: the venv's own python or its `loupe` script."""
    argv = shlex.split(entrypoint)
    build_arguments(entrypoint)
    program = sys.executable if argv[0] == "python" else str(Path(sys.executable).parent / argv[0])
    return [program, *argv[1:]]


# ----------------------------------------------------------------------------------------------
# The Dockerfile.


def dockerfile_instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of deploy/Dockerfile (or of `text`), with continuation lines
    joined and comments dropped."""
    instructions, pending = [], ""
    for line in (DOCKERFILE.read_text() if text is None else text).splitlines():
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


def dockerfile_args() -> dict[str, str]:
    return {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest}
