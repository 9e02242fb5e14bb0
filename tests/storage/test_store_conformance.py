"""One conformance suite for the object store, run against every backend Loupe writes atlases to.

Like zarr-python's store tests: each behaviour the atlas layer relies on (whole-object put/get with
checksums, listing, server-side copy, delete, conditional writes) is asserted once and run on a
local folder, fsspec's in-memory store and S3 (moto on 127.0.0.1). A backend that passes this
suite can hold atlases.
"""

from __future__ import annotations

import threading
import uuid
from typing import Iterator

import pytest

from loupe.storage import checksums
from loupe.storage.errors import ChecksumError, StorageError
from loupe.storage.objects import ConditionFailedError, ObjectStore
from loupe.storage.urls import resolve


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield ObjectStore(resolve(str(tmp_path / "root")))
    elif request.param == "memory":
        import fsspec

        url = f"memory://conformance-{uuid.uuid4().hex}"
        yield ObjectStore(resolve(url))
        memory = fsspec.filesystem("memory")
        if memory.exists(url):
            memory.rm(url, recursive=True)
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield ObjectStore(resolve(f"s3://{bucket}/root", request.getfixturevalue("s3_options")))


def test_put_returns_the_checksum_entry_and_get_reads_the_same_bytes(store):
    entry = store.put("a/b/obj@1+x.bin", b"hello atlas")
    assert entry == checksums.entry(b"hello atlas")
    assert entry["size"] == 11
    assert store.get("a/b/obj@1+x.bin") == b"hello atlas"
    assert store.get("a/b/obj@1+x.bin", expected=entry) == b"hello atlas"


def test_a_wrong_checksum_is_reported_naming_the_object(store):
    store.put("x.json", b"{}")
    with pytest.raises(ChecksumError) as info:
        store.get("x.json", expected=checksums.entry(b"[]"))
    assert store.location.url_of("x.json") in str(info.value)


def test_a_missing_object_is_an_error_naming_it_or_none_when_optional(store):
    with pytest.raises(StorageError, match="missing object") as info:
        store.get("no/such.bin")
    assert store.location.url_of("no/such.bin") in str(info.value)
    assert store.get_optional("no/such.bin") is None
    assert not store.exists("no/such.bin")


def test_overwrite_replaces_the_bytes(store):
    store.put("k", b"one")
    store.put("k", b"two")
    assert store.get("k") == b"two" and store.exists("k")


def test_get_many_reads_every_object_and_fails_on_a_missing_one(store):
    for i in range(5):
        store.put(f"many/{i}", str(i).encode())
    got = store.get_many([f"many/{i}" for i in range(5)])
    assert got == {f"many/{i}": str(i).encode() for i in range(5)}
    assert store.get_many(["many/3"]) == {"many/3": b"3"}
    assert store.get_many([]) == {}
    with pytest.raises(StorageError):
        store.get_many(["many/0", "many/missing"])


def test_put_many_writes_every_object_and_get_many_optional_reads_missing_as_none(store):
    store.put_many({f"batch/{i}/zarr.json": f"meta {i}".encode() for i in range(6)})
    store.put_many({})
    got = store.get_many_optional(["batch/5/zarr.json", "batch/none/zarr.json", "batch/0/zarr.json"])
    assert got == {"batch/5/zarr.json": b"meta 5", "batch/none/zarr.json": None, "batch/0/zarr.json": b"meta 0"}
    assert store.get_many_optional(["batch/3/zarr.json"]) == {"batch/3/zarr.json": b"meta 3"}
    assert store.get_many_optional([]) == {}


def test_listing_is_recursive_relative_to_the_root_with_sizes(store):
    store.put("d/one", b"1")
    store.put("d/sub/two", b"22")
    store.put("d/sub/deeper/three", b"333")
    store.put("other/four", b"4444")
    assert store.list_files("d") == {"d/one": 1, "d/sub/two": 2, "d/sub/deeper/three": 3}
    assert store.list_files("empty") == {}
    assert store.list_dirs("d") == ["sub"]
    assert store.list_dirs("nothing-here") == []


def test_copy_many_copies_within_the_root_and_names_a_missing_source(store):
    store.put("src/a", b"A")
    store.put("src/b", b"B")
    store.copy_many([("src/a", "dst/a"), ("src/b", "dst/x/b")])
    assert store.get("dst/a") == b"A" and store.get("dst/x/b") == b"B"
    store.copy_many([])
    with pytest.raises(StorageError):
        store.copy_many([("src/missing", "dst/c")])


def test_delete_and_delete_tree(store):
    store.put("t/a", b"a")
    store.put("t/u/b", b"b")
    store.put("keep", b"k")
    store.delete("t/a")
    store.delete("t/a")  # deleting what is gone is not an error
    assert not store.exists("t/a") and store.exists("t/u/b")
    store.delete_tree("t")
    store.delete_tree("t")
    assert store.list_files("t") == {} and store.get("keep") == b"k"


def test_conditional_create_and_replace(store):
    tag = store.put_conditional("lease.json", b"first", expected_tag=None)
    with pytest.raises(ConditionFailedError, match="already exists"):
        store.put_conditional("lease.json", b"second", expected_tag=None)
    current = store.get_tagged("lease.json")
    assert current.data == b"first" and current.tag == tag
    new_tag = store.put_conditional("lease.json", b"renewed", expected_tag=tag)
    assert new_tag != tag and store.get("lease.json") == b"renewed"
    with pytest.raises(ConditionFailedError, match="changed since it was read"):
        store.put_conditional("lease.json", b"stale", expected_tag=tag)
    assert store.get("lease.json") == b"renewed"
    assert store.get_tagged("absent.json") is None


def test_racing_conditional_creates_have_exactly_one_winner(store):
    winners, losers = [], []
    barrier = threading.Barrier(4)

    def race(index: int) -> None:
        barrier.wait()
        try:
            store.put_conditional("pointer.json", f"writer {index}".encode(), expected_tag=None)
            winners.append(index)
        except ConditionFailedError:
            losers.append(index)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(winners) == 1 and len(losers) == 3
    assert store.get("pointer.json") == f"writer {winners[0]}".encode()
