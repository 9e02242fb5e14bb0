"""Publishing on misbehaving S3-compatible stores: moto behind tests/s3_faults.py's fault layer."""

from __future__ import annotations

import json

import pytest

from loupe.storage import AtlasWriter, ConditionalWritesIgnoredError, layout, list_versions, open_atlas, publish
from loupe.storage.lease import read_lease
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve
from tests.storage.atlas_samples import write_small


@pytest.fixture
def faulty(faulty_s3, s3_bucket, s3_options):
    """(FaultyS3, atlas URL, storage_options pointing at the faulty endpoint)."""
    return faulty_s3, f"s3://{s3_bucket}/atlases/faulty", faulty_s3.storage_options(s3_options)


def test_a_store_that_ignores_conditional_writes_is_refused_before_a_draft_exists(faulty):
    server, url, options = faulty
    server.faults.ignore_conditional_headers = True
    with pytest.raises(ConditionalWritesIgnoredError) as err:
        AtlasWriter.create(url, storage_options=options)
    message = str(err.value)
    assert server.endpoint in message and url in message and "If-None-Match" in message
    assert list_versions(url, options) == []
    store = ObjectStore(resolve(url, options))
    assert store.list_files(layout.BUILD_STATE) == {}  # the probe object is cleaned up


def test_the_probe_runs_once_per_process_and_store(faulty):
    server, url, options = faulty
    for seed in range(2):
        writer = AtlasWriter.create(url, storage_options=options)
        write_small(writer, seed=seed)
        writer.publish()
    probes = server.faults.requests("PUT", "conditional-write-probe")
    assert len(probes) == 3  # the scratch object, then the two writes that must be refused
    assert {tuple(sorted(h)) for _, _, h in probes[1:]} == {("HTTP_IF_NONE_MATCH",), ("HTTP_IF_MATCH",)}


@pytest.mark.parametrize("first", [True, False], ids=["first-publish", "replace"])
def test_a_pointer_write_whose_answer_is_lost_is_reported_published(faulty, first):
    """S3 applies the swap, the 500 is retried, the retry meets its own write (412): still ours."""
    server, url, options = faulty
    if not first:
        base = AtlasWriter.create(url, storage_options=options)
        write_small(base, seed=1)
        base.publish()
    writer = AtlasWriter.create(url, storage_options=options)
    write_small(writer, seed=2)
    server.faults.lose_response_match = lambda method, path: method == "PUT" and path.endswith("/atlas.json")
    server.faults.lose_response_after_apply = 1
    writer.publish()
    assert server.faults.lose_response_after_apply == 0  # the fault did fire
    pointer_puts = server.faults.requests("PUT", "/atlas.json")
    assert len(pointer_puts) >= 2 + (0 if first else 1)  # the lost write and its retry
    atlas = open_atlas(url, storage_options=options)
    assert atlas.version == writer.version and atlas.verify() > 0
    marker = json.loads(writer.store.get(layout.published_marker(writer.version)))
    assert marker["version"] == writer.version
    assert marker["manifest_sha256"] == publish.read_pointer(writer.store)["manifest_sha256"]
    assert {v.version: v.status for v in list_versions(url, options)}[writer.version] == "current"


def test_a_lease_write_whose_answer_is_lost_is_still_ours(faulty):
    server, url, options = faulty
    server.faults.lose_response_match = lambda method, path: method == "PUT" and path.endswith("/lease.json")
    server.faults.lose_response_after_apply = 1
    writer = AtlasWriter.create(url, storage_options=options)
    assert server.faults.lose_response_after_apply == 0
    assert read_lease(writer.store, writer.version).holder == writer.lease.info.holder
    write_small(writer)
    writer.publish()
    assert open_atlas(url, storage_options=options).version == writer.version
