"""Readers never mistake missing or mis-served bytes for data."""

from __future__ import annotations

import pytest

from loupe.storage import AtlasWriter, ChecksumError, StorageError, open_atlas
from loupe.storage.guarded_store import MissingObjectError
from loupe.storage.objects import ObjectStore
from loupe.storage.reader import RangeReadError
from loupe.storage.urls import resolve
from tests.storage.atlas_samples import IMAGES_PER_CHUNK, UNITS_PER_SHARD, write_small


def published(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(writer)
    writer.publish()
    return built, ObjectStore(resolve(target.url, target.options))


def test_a_missing_render_shard_is_an_error_naming_it(target):
    built, store = published(target)
    atlas = open_atlas(target.url, storage_options=target.options)
    shard = f"versions/{built.version}/renders/net/conv1/channel.zarr/c/0/0/0/0"
    assert store.exists(shard)
    store.delete(shard)
    for read in (lambda: atlas.render("net", "conv1", 1), lambda: atlas.layer_renders("net", "conv1")):
        with pytest.raises(MissingObjectError) as info:
            read()
        assert info.value.url == store.location.url_of(shard) and "missing object" in str(info.value)
    # units in the other shards still read, exactly
    assert (atlas.render("net", "conv1", UNITS_PER_SHARD + 1) == built.images[UNITS_PER_SHARD + 1]).all()


def test_a_missing_activation_chunk_is_an_error_even_through_the_lazy_array(target):
    built, store = published(target)
    atlas = open_atlas(target.url, storage_options=target.options)
    chunk = f"versions/{built.version}/activations/net/conv1/max.zarr/c/1/0"
    store.delete(chunk)
    lazy = atlas.activations("net", "conv1", "max")
    assert (lazy[:IMAGES_PER_CHUNK] == built.activations[:IMAGES_PER_CHUNK]).all()
    with pytest.raises(MissingObjectError, match="max.zarr/c/1/0"):
        lazy[:]
    with pytest.raises(MissingObjectError):
        lazy[IMAGES_PER_CHUNK]


def test_units_never_rendered_are_reported_absent_not_black(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    skip = {"render-net-conv1-channel-4-s0"}
    write_small(writer, skip=skip)
    writer.publish(expected_items=None)
    atlas = open_atlas(target.url, storage_options=target.options)
    with pytest.raises(StorageError, match="unit 5 has no 'channel' render"):
        atlas.render("net", "conv1", 5)
    units, images = atlas.layer_renders("net", "conv1")
    assert 5 not in units.tolist() and len(units) == len(images)


def test_a_store_that_mis_serves_ranges_is_told_apart_from_a_corrupt_object(s3_bucket, s3_options, faulty_s3):
    url = f"s3://{s3_bucket}/atlas"
    writer = AtlasWriter.create(url, storage_options=s3_options)
    built = write_small(writer)
    writer.publish()

    faulty = faulty_s3.storage_options(s3_options)
    atlas = open_atlas(url, storage_options=faulty)
    assert (atlas.render("net", "conv1", 1) == built.images[1]).all()
    faulty_s3.faults.shift_ranges_by = 1
    with pytest.raises(RangeReadError) as info:
        open_atlas(url, storage_options=faulty).render("net", "conv1", 2)
    assert "mis-serves range requests" in str(info.value) and "channel.zarr/c/0/0/0/0" in str(info.value)
    assert not isinstance(info.value, ChecksumError)

    faulty_s3.faults.shift_ranges_by = 0
    store = ObjectStore(resolve(url, s3_options))
    shard = f"versions/{built.version}/renders/net/conv1/channel.zarr/c/0/0/0/0"
    data = bytearray(store.get(shard))
    data[len(data) // 3] ^= 0xFF  # inside unit data, not the shard index
    store.put(shard, bytes(data))
    with pytest.raises(ChecksumError, match="corrupt object .*channel.zarr/c/0/0/0/0"):
        open_atlas(url, storage_options=s3_options).layer_renders("net", "conv1")


def test_without_ranged_reads_a_store_that_mis_serves_ranges_still_reads_correctly(s3_bucket, s3_options, faulty_s3):
    url = f"s3://{s3_bucket}/atlas"
    writer = AtlasWriter.create(url, storage_options=s3_options)
    built = write_small(writer)
    writer.publish()
    faulty_s3.faults.shift_ranges_by = 1
    atlas = open_atlas(url, storage_options=faulty_s3.storage_options(s3_options), ranged_reads=False)
    with pytest.raises(RangeReadError, match="ranged_reads=False"):
        open_atlas(url, storage_options=faulty_s3.storage_options(s3_options)).render("net", "conv1", 2)

    faulty_s3.faults.log.clear()
    assert (atlas.render("net", "conv1", 2) == built.images[2]).all()
    units, images = atlas.layer_renders("net", "conv1", "diversity")
    assert (images == built.diverse[units]).all()
    assert (atlas.activations("net", "conv1")[:] == built.activations).all()
    gets = faulty_s3.faults.requests("GET", "/zarr.json") + faulty_s3.faults.requests("GET", "/c/")
    assert gets and not any("HTTP_RANGE" in headers for _, _, headers in gets)
    # one whole GET per shard, shared by the index and chunk reads of a unit
    channel_shard = faulty_s3.faults.requests("GET", "channel.zarr/c/0/0/0/0")
    assert len(channel_shard) == 1


def test_without_ranged_reads_whole_objects_are_checked_against_their_sha256(target):
    built, store = published(target)
    chunk = f"versions/{built.version}/activations/net/conv1/mean.zarr/c/0/0"
    # A substituted object: another chunk's valid bytes (its CRC32C matches), which no chunk check catches.
    store.put(chunk, store.get(f"versions/{built.version}/activations/net/conv1/mean.zarr/c/1/0"))
    atlas = open_atlas(target.url, storage_options=target.options, ranged_reads=False)
    assert (atlas.render("net", "conv1", 3) == built.images[3]).all()
    with pytest.raises(ChecksumError, match="checksum mismatch in .*mean.zarr/c/0/0") as info:
        atlas.activations("net", "conv1", "mean")[0]
    assert info.value.url == store.location.url_of(chunk)


def test_missing_objects_are_refused_on_every_zarr_read_path(target):
    """zarr may fetch through get, get_partial_values or _get_many; none may yield a fill value."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    built, store = published(target)
    shard = "renders/net/conv1/channel.zarr/c/0/0/0/0"
    store.delete(f"versions/{built.version}/{shard}")
    for ranged in (True, False):
        guarded = open_atlas(target.url, storage_options=target.options, ranged_reads=ranged)._zarr_store

        async def many():
            return [value async for value in guarded._get_many([(shard, default_buffer_prototype(), None)])]

        with pytest.raises(MissingObjectError, match="channel.zarr/c/0/0/0/0"):
            sync(guarded.get_partial_values(default_buffer_prototype(), [(shard, None)]))
        with pytest.raises(MissingObjectError, match="channel.zarr/c/0/0/0/0"):
            sync(many())
