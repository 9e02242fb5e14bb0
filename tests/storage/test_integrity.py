"""Corruption is detected on read, with an error naming the damaged object."""

from __future__ import annotations

import pytest

from tests.storage.atlas_samples import write_small
from loupe.storage import AtlasWriter, ChecksumError, StorageError, open_atlas


def _flip_byte(store, rel: str, offset: int | None = None) -> None:
    """Flip one byte of a stored object in place, behind Loupe's back."""
    data = bytearray(store.fs.cat_file(store.location.path(rel)))
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    store.fs.pipe_file(store.location.path(rel), bytes(data))


@pytest.fixture
def published(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    write_small(writer)
    writer.publish()
    return writer


def test_flipped_byte_in_a_render_shard_is_named(published, target):
    shard = f"versions/{published.version}/renders/net/conv1/channel.zarr/c/1/0/0/0"
    _flip_byte(published.store, shard)
    atlas = open_atlas(target.url, storage_options=target.options)
    atlas.render("net", "conv1", 0)  # other shards are fine
    with pytest.raises(ChecksumError, match="channel.zarr/c/1/0/0/0"):
        for unit in range(4, 8):  # the flipped byte lands in one of this shard's units
            atlas.render("net", "conv1", unit)
    with pytest.raises(ChecksumError, match="channel.zarr/c/1/0/0/0"):
        atlas.verify()


def test_flipped_byte_in_a_shard_index_is_named(published, target):
    shard = f"versions/{published.version}/renders/net/conv1/channel.zarr/c/0/0/0/0"
    size = len(published.store.fs.cat_file(published.store.location.path(shard)))
    _flip_byte(published.store, shard, offset=size - 10)  # the index sits at the end of the shard
    atlas = open_atlas(target.url, storage_options=target.options)
    with pytest.raises(ChecksumError, match="channel.zarr/c/0/0/0/0"):
        atlas.render("net", "conv1", 1)


def test_flipped_byte_in_a_table_is_named(published, target):
    part = f"versions/{published.version}/tables/examples/model=net/layer=conv1/part-reduce-net-s0.parquet"
    _flip_byte(published.store, part)
    atlas = open_atlas(target.url, storage_options=target.options)
    with pytest.raises(ChecksumError, match="layer=conv1/part-reduce-net-s0.parquet"):
        atlas.examples("net", "conv1", 1)


def test_flipped_byte_in_the_manifest_is_named(published, target):
    _flip_byte(published.store, f"versions/{published.version}/manifest.json")
    with pytest.raises(ChecksumError, match=f"{published.version}/manifest.json"):
        open_atlas(target.url, storage_options=target.options)


def test_missing_object_is_named(published, target):
    part = f"versions/{published.version}/tables/units/model=net/layer=conv1/part-reduce-net-s0.parquet"
    published.store.delete(part)
    with pytest.raises(StorageError, match="missing object .*part-reduce-net-s0.parquet"):
        open_atlas(target.url, storage_options=target.options).stats("net", "conv1", 0)
