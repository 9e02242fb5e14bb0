"""A planted manifest or checksum list can never make a reader leave the version folder."""

from __future__ import annotations

import json

import pytest

from loupe.storage import AtlasWriter, StorageError, open_atlas
from loupe.storage.checksums import canonical_json, sha256
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve
from tests.storage.atlas_samples import write_small

UNSAFE = ["../../etc/passwd", "/etc/passwd", "renders/../../../secret", "a//b", "./x", "s3://other/bucket", "a\\..\\b"]


def published(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(writer)
    writer.publish()
    store = ObjectStore(resolve(target.url, target.options))
    return built.version, store


def replant_manifest(store: ObjectStore, version: str, manifest: dict) -> None:
    """What an attacker with write access to the bucket would do: a new manifest and a matching pointer."""
    data = canonical_json(manifest)
    store.put(f"versions/{version}/manifest.json", data)
    pointer = json.loads(store.get("atlas.json"))
    pointer["manifest_sha256"] = sha256(data)
    store.put("atlas.json", canonical_json(pointer))


@pytest.mark.parametrize("bad", UNSAFE)
def test_unsafe_array_and_table_paths_in_a_manifest_are_refused(target, bad):
    version, store = published(target)
    manifest = json.loads(store.get(f"versions/{version}/manifest.json"))
    entry = manifest["layers"]["net"]["conv1"]
    entry["tables"]["units"] = {bad: next(iter(entry["tables"]["units"].values()))}
    replant_manifest(store, version, manifest)
    with pytest.raises(StorageError, match="unsafe path") as info:
        open_atlas(target.url, storage_options=target.options)
    assert repr(bad) in str(info.value) and "manifest" in str(info.value)


def test_an_unsafe_render_array_path_is_refused(target):
    version, store = published(target)
    manifest = json.loads(store.get(f"versions/{version}/manifest.json"))
    manifest["layers"]["net"]["conv1"]["renders"]["channel"]["array"] = "../other-version/renders/x.zarr"
    replant_manifest(store, version, manifest)
    with pytest.raises(StorageError, match="unsafe path '../other-version/renders/x.zarr'"):
        open_atlas(target.url, storage_options=target.options)


def test_unsafe_paths_in_the_checksum_list_are_refused_by_verify(target):
    version, store = published(target)
    manifest = json.loads(store.get(f"versions/{version}/manifest.json"))
    sums = json.loads(store.get(f"versions/{version}/checksums.json"))
    sums["../../atlas.json"] = {"sha256": "0" * 64, "size": 1}
    data = canonical_json(sums)
    store.put(f"versions/{version}/checksums.json", data)
    manifest["checksums"].update(sha256=sha256(data), size=len(data))
    replant_manifest(store, version, manifest)
    atlas = open_atlas(target.url, storage_options=target.options)
    with pytest.raises(StorageError, match=r"checksum list .* unsafe path '\.\./\.\./atlas\.json'"):
        atlas.verify()
