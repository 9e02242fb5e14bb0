"""Every YAML file under deploy/ and configs/ parses strictly, and the Kubernetes ones are
well-formed objects in one namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    CLUSTER_SCOPED_KINDS, DOCKERFILE, DOCKERIGNORE, KUBERAY, NAMESPACE, YAML_FILES, load_docs, parse_docs, rel,
)


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
    assert DOCKERFILE.is_file() and DOCKERIGNORE.is_file()


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
