"""Example pictures, samples, histograms and the one-row-per-unit units table, on a local folder and
on S3: written in shards, published, read back byte for byte; damage and gaps named; and the
draft-side reads a reduce uses, verified against the writing item's record."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loupe.storage import AtlasWriter, MissingObjectError, StorageError, open_atlas
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve

UNITS, SLOTS, SIZE, HEAT = 10, 3, 6, 4


def pictures(units: range, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(units), SLOTS, SIZE, SIZE, 3), dtype=np.uint8)
    heat = rng.normal(size=(len(units), SLOTS, HEAT, HEAT)).astype(np.float16)
    return pixels, heat


def writer_for(target) -> AtlasWriter:
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    writer.declare_examples("m", "l", "top", n_units=UNITS, slots=SLOTS, example_size=SIZE, heatmap_size=HEAT,
                            units_per_shard=4)
    writer.declare_activations("m", "l", n_images=10, n_channels=3, images_per_chunk=4)
    return writer


def test_pictures_round_trip_across_shards(target):
    writer = writer_for(target)
    pixels, heat = pictures(range(0, 8))
    with writer.item("reduce-a") as out:
        out.write_example_pictures("m", "l", "top", range(0, 8), pixels, heat)  # two whole shards, one call
        out.write_units("m", "l", pa.table({"unit": pa.array(range(8), pa.int32()), "max_max": np.arange(8.0)}))
    writer.publish()
    writer.release()
    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.example_kinds("m", "l") == ["top"]
    for unit in range(8):
        stored = atlas.example_pictures("m", "l", unit, "top")
        assert np.array_equal(stored.pictures, pixels[unit])
        assert np.array_equal(stored.heatmaps, heat[unit])
    with pytest.raises(StorageError, match="unit 9 of m/l has no 'top' example pictures"):
        atlas.example_pictures("m", "l", 9, "top")
    with pytest.raises(StorageError, match="no 'bottom' example pictures"):
        atlas.example_pictures("m", "l", 0, "bottom")


def test_a_missing_shard_is_named(target):
    writer = writer_for(target)
    pixels, heat = pictures(range(0, 4))
    with writer.item("reduce-a") as out:
        out.write_example_pictures("m", "l", "top", range(0, 4), pixels, heat)
    writer.publish()
    writer.release()
    store = ObjectStore(resolve(target.url, target.options))
    shard = f"versions/{writer.version}/examples/m/l/top.pictures.zarr/c/0/0/0/0/0"
    store.delete(shard)
    with pytest.raises(MissingObjectError, match="top.pictures.zarr/c/0/0/0/0/0"):
        open_atlas(target.url, storage_options=target.options).example_pictures("m", "l", 1, "top")


def test_bad_shapes_are_refused_naming_the_array(tmp_path):
    from tests.storage.atlas_samples import Target

    writer = writer_for(Target("local", str(tmp_path / "atlas"), None))
    pixels, heat = pictures(range(0, 2))
    with writer.item("reduce-a") as out:
        with pytest.raises(StorageError, match="top example pictures of m/l.*pictures must be uint8"):
            out.write_example_pictures("m", "l", "top", [0, 1], pixels[:, :2], heat)
        with pytest.raises(StorageError, match="strictly increasing"):
            out.write_example_pictures("m", "l", "top", [1, 0], pixels, heat)
    writer.release()


def test_units_table_has_one_row_per_unit_joined_from_every_part(target):
    writer = writer_for(target)
    with writer.item("reduce-a") as out:
        out.write_units("m", "l", pa.table({"unit": pa.array([0, 1, 2], pa.int32()), "max_max": [1.0, 2.0, 4.0],
                                            "dead": [False, False, True]}))
        out.write_samples("m", "l", pa.table({"unit": pa.array([0, 0, 2], pa.int32()), "band": [0, 1, 0],
                                              "value": [0.5, 0.9, 3.0]}))
        out.write_histograms("m", "l", pa.table({"unit": pa.array([0, 0, 1], pa.int32()), "bin": [1, 0, 0],
                                                 "count": [3, 4, 5]}))
    with writer.item("render-b") as out:
        out.write_units("m", "l", pa.table({"unit": pa.array([1, 3], pa.int32()), "fv_activation": [5.0, 6.0]}))
    with writer.item("score-c") as out:
        out.write_units("m", "l", pa.table({"unit": pa.array([1], pa.int32()), "fv_natural_ratio": [2.5]}))
    writer.publish()
    writer.release()
    atlas = open_atlas(target.url, storage_options=target.options)
    rows = atlas.units_table("m", "l").to_pylist()
    assert [r["unit"] for r in rows] == [0, 1, 2, 3]
    assert rows[1] == {"unit": 1, "max_max": 2.0, "dead": False, "fv_activation": 5.0, "fv_natural_ratio": 2.5}
    assert rows[3]["max_max"] is None and rows[3]["fv_activation"] == 6.0
    assert atlas.stats("m", "l", 1)["fv_natural_ratio"] == 2.5
    assert atlas.samples("m", "l", 0).column("value").to_pylist() == [0.5, 0.9]
    assert atlas.histogram("m", "l", 0).column("count").to_pylist() == [4, 3]


def test_draft_reads_return_what_items_wrote_and_refuse_tampering(target):
    writer = writer_for(target)
    values = np.arange(30, dtype=np.float16).reshape(10, 3)
    with writer.item("scan-0") as out:
        out.write_activations("m", "l", 0, max=values[:8])
    with writer.item("scan-1") as out:
        out.write_activations("m", "l", 8, max=values[8:])
    with writer.item("reduce-a") as out:
        out.write_units("m", "l", pa.table({"unit": pa.array([0, 1], pa.int32()), "max_max": [1.0, 2.0]}))
    chunks = list(writer.read_activation_chunks("m", "l", "max", ["scan-0", "scan-1"]))
    assert [start for start, _ in chunks] == [0, 4, 8]
    assert np.array_equal(np.concatenate([v for _, v in chunks]), values)
    assert writer.read_table_part("reduce-a", "units", "m", "l").column("max_max").to_pylist() == [1.0, 2.0]
    store = ObjectStore(resolve(target.url, target.options))
    chunk = f"versions/{writer.version}/activations/m/l/max.zarr/c/1/0"
    store.put(chunk, b"tampered")
    fresh = AtlasWriter.resume(target.url, writer.version, target.options)
    with pytest.raises(StorageError, match="max.zarr/c/1/0"):
        list(fresh.read_activation_chunks("m", "l", "max", ["scan-0"]))
    with pytest.raises(StorageError, match="not complete"):
        fresh.read_table_part("reduce-zzz", "units", "m", "l")
    writer.release()
