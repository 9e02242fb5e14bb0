"""Writing a version and reading it back, on a local folder and on S3 (moto)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import zarr

from tests.storage.atlas_samples import N_IMAGES, N_UNITS, write_small
from loupe.storage import AtlasWriter, StorageError, VersionNotFoundError, open_atlas


def _fs_and_root(target, version):
    """A plain fsspec filesystem and the version's root path, for reading without Loupe."""
    import fsspec

    if target.kind == "local":
        return fsspec.filesystem("file"), f"{target.url}/versions/{version}"
    return fsspec.filesystem("s3", **target.options), f"{target.url[len('s3://'):]}/versions/{version}"


def test_everything_written_reads_back(target):
    writer = AtlasWriter.create(target.url, config={"layers": ["conv1"]}, models={"net": {"weights_digest": "abc"}},
                                code_version="1.2.3", storage_options=target.options)
    built = write_small(writer)
    manifest = writer.publish(expected_items=built.keys)

    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.version == built.version
    assert atlas.models() == ["net"] and atlas.layers("net") == ["conv1"]
    assert atlas.kinds("net", "conv1") == ["channel", "diversity"]
    assert atlas.units("net", "conv1") == list(range(N_UNITS))
    for unit in (0, 3, 4, 9):
        np.testing.assert_array_equal(atlas.render("net", "conv1", unit), built.images[unit])
        np.testing.assert_array_equal(atlas.render("net", "conv1", unit, kind="diversity"), built.diverse[unit])
    assert atlas.objective("net", "conv1", 9) == 9.0
    np.testing.assert_array_equal(atlas.objective("net", "conv1", 5, kind="diversity"), [5.0, -5.0])
    units, grid = atlas.layer_renders("net", "conv1")
    np.testing.assert_array_equal(units, np.arange(N_UNITS))
    np.testing.assert_array_equal(grid, built.images)
    np.testing.assert_array_equal(atlas.activations("net", "conv1", "max")[:], built.activations)
    np.testing.assert_array_equal(atlas.activations("net", "conv1", "mean")[2:8], built.activations[2:8] / 2)
    assert atlas.examples("net", "conv1", 3).column("value").to_pylist() == [3.0, 2.0]
    assert atlas.stats("net", "conv1", 7) == {"unit": 7, "mean": 0.7, "count": 100}
    assert atlas.images().num_rows == N_IMAGES

    assert manifest["config_sha256"] and manifest["models"] == {"net": {"weights_digest": "abc"}}
    assert manifest["code_version"] == "1.2.3" and manifest["status"] == "complete"
    assert manifest["counts"]["items"] == len(built.keys) and manifest["counts"]["images"] == N_IMAGES
    assert manifest["counts"]["renders"] == {"channel": N_UNITS, "diversity": N_UNITS}
    assert atlas.verify() == manifest["counts"]["objects"]


def test_arrays_and_tables_open_without_loupe(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(writer)
    writer.publish()
    fs, root = _fs_and_root(target, built.version)

    store = zarr.storage.FsspecStore(fs=_async(fs), path=f"{root}/renders/net/conv1/channel.zarr", read_only=True) \
        if target.kind == "s3" else f"{root}/renders/net/conv1/channel.zarr"
    renders = zarr.open_array(store, mode="r")
    assert renders.shape == (N_UNITS, 8, 8, 3) and renders.shards == (4, 8, 8, 3) and renders.chunks == (1, 8, 8, 3)
    np.testing.assert_array_equal(renders[:], built.images)

    units = ds.dataset(f"{root}/tables/units", format="parquet", partitioning="hive", filesystem=fs).to_table()
    assert set(units.column_names) >= {"unit", "mean", "model", "layer"}
    assert sorted(units.column("unit").to_pylist()) == list(range(N_UNITS))
    assert set(units.column("layer").to_pylist()) == {"conv1"}
    examples = ds.dataset(f"{root}/tables/examples", format="parquet", partitioning="hive", filesystem=fs)
    assert examples.to_table(filter=ds.field("unit") == 2).num_rows == 2


def _async(fs):
    import s3fs

    return s3fs.S3FileSystem(asynchronous=True, key=fs.key, secret=fs.secret, client_kwargs=fs.client_kwargs)


def test_repeated_items_rewrite_identical_bytes_and_no_duplicate_rows(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(writer)
    first = {p: writer.store.get(p) for p in writer.store.list_files(f"versions/{built.version}")}
    write_small(writer)  # every item again, as a retried Ray task would
    second = {p: writer.store.get(p) for p in writer.store.list_files(f"versions/{built.version}")}
    assert first == second
    writer.publish()
    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.units_table("net", "conv1").num_rows == N_UNITS
    assert atlas.images().num_rows == N_IMAGES


def test_completion_records_tell_done_from_not_done(target):
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(writer, skip={"render-net-conv1-channel-4-s0"})
    assert not writer.is_complete("render-net-conv1-channel-4-s0")
    assert writer.is_complete("render-net-conv1-channel-0-s0")
    assert writer.completed_items() == set(built.keys) - {"render-net-conv1-channel-4-s0"}
    item = writer.item("render-net-conv1-channel-4-s0")
    item.write_render_block("net", "conv1", "channel", 4, built.images[4:8], np.zeros(4))
    assert not writer.is_complete(item.key)  # data alone is not completion
    with pytest.raises(StorageError, match="not complete.*render-net-conv1-channel-4-s0"):
        writer.publish(expected_items=built.keys)
    item.commit()
    writer.release()  # the first writer's build ended; the resumed writer takes the lease to publish
    resumed = AtlasWriter.resume(target.url, writer.version, storage_options=target.options)
    assert resumed.completed_items() == set(built.keys)
    resumed.publish(expected_items=built.keys)
    assert open_atlas(target.url, storage_options=target.options).version == writer.version


def test_unpublished_or_missing_versions_are_not_readable(target):
    with pytest.raises(VersionNotFoundError, match="no published version"):
        open_atlas(target.url, storage_options=target.options)
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    write_small(writer)
    with pytest.raises(VersionNotFoundError, match="still being built"):
        open_atlas(target.url, version=writer.version, storage_options=target.options)


def test_bad_writes_are_refused_with_the_item_and_field_named(tmp_path):
    writer = AtlasWriter.create(str(tmp_path))
    writer.declare_renders("net", "conv1", "channel", n_units=10, height=8, width=8, units_per_shard=4)
    writer.declare_activations("net", "conv1", n_images=12, n_channels=3, images_per_chunk=6)
    item = writer.item("k1")
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(StorageError, match="k1.*span more than one shard"):
        item.write_render_block("net", "conv1", "channel", 2, imgs, np.zeros(4))
    with pytest.raises(StorageError, match="uint8"):
        item.write_render_block("net", "conv1", "channel", 0, imgs.astype(np.float32), np.zeros(4))
    with pytest.raises(StorageError, match=r"shape \[n, 8, 8, 3\]"):
        item.write_render_block("net", "conv1", "channel", 0, np.zeros((4, 9, 8, 3), np.uint8), np.zeros(4))
    with pytest.raises(StorageError, match="not declared"):
        item.write_render_block("net", "conv2", "channel", 0, imgs, np.zeros(4))
    with pytest.raises(StorageError, match="not aligned to chunks of 6"):
        item.write_activations("net", "conv1", 3, max=np.zeros((6, 3), np.float16))
    with pytest.raises(StorageError, match="different shape"):
        writer.declare_renders("net", "conv1", "channel", n_units=11, height=8, width=8, units_per_shard=4)
    with pytest.raises(StorageError, match="invalid layer 'a/b'"):
        writer.declare_renders("net", "a/b", "channel", n_units=1, height=8, width=8, units_per_shard=1)
    with pytest.raises(StorageError, match="missing column"):
        item.write_units("net", "conv1", pa.table({"value": [1.0]}))
    with pytest.raises(StorageError, match="column 'layer'"):
        item.write_units("net", "conv1", pa.table({"unit": [1], "layer": ["conv9"]}))


def test_partials_round_trip_and_are_verified(tmp_path):
    from loupe.storage import AtlasWriter, ChecksumError

    writer = AtlasWriter.create(str(tmp_path / "atlas"))
    with writer.item("scan-1") as item:
        item.write_partial("shard.bin", b"mergeable state")
    assert writer.read_partial("scan-1", "shard.bin") == b"mergeable state"
    stored = next((tmp_path / "atlas").rglob("shard.bin"))
    stored.write_bytes(b"Mergeable state")
    with pytest.raises(ChecksumError, match="shard.bin"):
        writer.read_partial("scan-1", "shard.bin")
    with pytest.raises(StorageError, match="no completed partial"):
        writer.read_partial("scan-2", "shard.bin")
