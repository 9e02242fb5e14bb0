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


def published_first_shard(target) -> tuple[ObjectStore, str]:
    """Publish pictures of units 0-3 (one shard); return the store and the shard's key."""
    writer = writer_for(target)
    pixels, heat = pictures(range(0, 4))
    with writer.item("reduce-a") as out:
        out.write_example_pictures("m", "l", "top", range(0, 4), pixels, heat)
    writer.publish()
    writer.release()
    return ObjectStore(resolve(target.url, target.options)), \
        f"versions/{writer.version}/examples/m/l/top.pictures.zarr/c/0/0/0/0/0"


def test_a_missing_shard_is_named(target):
    store, shard = published_first_shard(target)
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


def test_a_tampered_table_part_is_refused_naming_it(target):
    writer = writer_for(target)
    with writer.item("reduce-a") as out:
        out.write_histograms("m", "l", pa.table({"unit": pa.array([0], pa.int32()), "bin": [0], "count": [1]}))
    store = ObjectStore(resolve(target.url, target.options))
    part = f"versions/{writer.version}/tables/histograms/model=m/layer=l/part-reduce-a.parquet"
    store.put(part, store.get(part)[:-1] + b"!")
    fresh = AtlasWriter.resume(target.url, writer.version, target.options)
    with pytest.raises(StorageError, match="part-reduce-a.parquet"):
        fresh.read_table_part("reduce-a", "histograms", "m", "l")
    with pytest.raises(StorageError, match="reduce-a wrote no samples table for m/l"):
        fresh.read_table_part("reduce-a", "samples", "m", "l")
    writer.release()


def test_one_unit_reads_one_shard_of_each_array(s3_bucket, s3_options):
    from tests.storage.atlas_samples import S3Requests, Target

    target = Target("s3", f"s3://{s3_bucket}/atlases/examples-counted", s3_options)
    writer = writer_for(target)
    pixels, heat = pictures(range(0, UNITS))
    with writer.item("reduce-a") as out:
        out.write_example_pictures("m", "l", "top", range(0, UNITS), pixels, heat)
    writer.publish()
    writer.release()
    with S3Requests() as requests:
        atlas = open_atlas(target.url, storage_options=target.options)
        atlas.example_pictures("m", "l", 0, "top")  # the checksum list, read once per atlas
        for unit in (1, 5, 9):
            requests.clear()
            stored = atlas.example_pictures("m", "l", unit, "top")
            assert np.array_equal(stored.pictures, pixels[unit]) and np.array_equal(stored.heatmaps, heat[unit])
            shard = unit // 4
            assert all(method == "GET" and rng is not None for method, _, rng in requests.sent)
            assert sorted({url.split("/examples/m/l/")[1] for _, url, _ in requests.sent}) == [
                f"top.heatmaps.zarr/c/{shard}/0/0/0", f"top.pictures.zarr/c/{shard}/0/0/0/0"]
            assert len(requests.sent) == 4  # per array: the shard index, then the unit's chunk


def test_a_manifest_from_before_example_pictures_still_opens(target):
    import json

    from loupe.storage.checksums import canonical_json, sha256

    writer = writer_for(target)
    with writer.item("reduce-a") as out:
        out.write_units("m", "l", pa.table({"unit": pa.array([0, 1], pa.int32()), "max_max": [1.0, 2.0]}))
    writer.publish()
    writer.release()
    store = ObjectStore(resolve(target.url, target.options))
    manifest = json.loads(store.get(f"versions/{writer.version}/manifest.json"))
    for by_layer in manifest["layers"].values():
        for entry in by_layer.values():
            del entry["examples"]
    data = canonical_json(manifest)
    store.put(f"versions/{writer.version}/manifest.json", data)
    pointer = json.loads(store.get("atlas.json"))
    pointer["manifest_sha256"] = sha256(data)
    store.put("atlas.json", canonical_json(pointer))
    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.example_kinds("m", "l") == []
    assert atlas.units_table("m", "l").column("max_max").to_pylist() == [1.0, 2.0]
    with pytest.raises(StorageError, match=r"no 'top' example pictures for m/l.*kinds: \[\]"):
        atlas.example_pictures("m", "l", 0)


def test_a_flipped_byte_in_a_picture_shard_is_named(target):
    from loupe.storage import ChecksumError

    store, shard = published_first_shard(target)
    data = bytearray(store.get(shard))
    data[0] ^= 0x01  # the first chunk of the shard: unit 0's pictures
    store.put(shard, bytes(data))
    atlas = open_atlas(target.url, storage_options=target.options)
    with pytest.raises(ChecksumError, match="top.pictures.zarr/c/0/0/0/0/0"):
        atlas.example_pictures("m", "l", 0, "top")


def test_joining_units_parts_matches_a_brute_force_merge():
    from loupe.storage.reader import join_on_unit

    rng = np.random.default_rng(3)
    for _ in range(20):
        parts, expected = [], {}
        for index in range(int(rng.integers(1, 4))):
            units = rng.integers(0, 8, int(rng.integers(1, 10)))  # repeats allowed within a part
            columns = {name: [None if rng.random() < 0.3 else float(rng.integers(0, 100)) for _ in units]
                       for name in rng.choice(["a", "b", "c"], int(rng.integers(1, 3)), replace=False)}
            parts.append(pa.table({"unit": pa.array(units, pa.int32()),
                                   **{n: pa.array(v, pa.float64()) for n, v in columns.items()}}))
            for row, unit in enumerate(units.tolist()):
                merged = expected.setdefault(unit, {})
                for name, values in columns.items():
                    if merged.get(name) is None:
                        merged[name] = values[row]
        names = sorted({c for p in parts for c in p.column_names if c != "unit"})
        got = join_on_unit(parts)
        assert got.schema.field("unit").type == pa.int32()
        assert got.column("unit").to_pylist() == sorted(expected)
        for row in got.to_pylist():
            assert {n: row[n] for n in names} == {n: expected[row["unit"]].get(n) for n in names}
