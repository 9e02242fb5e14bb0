"""ItemWriter: each object written once per item; a sparse set of units lands in one shard object
whose coverage in the record and manifest is exactly the units it holds."""

import json

import numpy as np
import pytest

from loupe.storage import AtlasWriter, StorageError, open_atlas

from tests.storage.atlas_samples import make_images

SPARSE = [3, 4, 6]  # one shard of 8 units, not contiguous


def sparse_writer(target) -> AtlasWriter:
    writer = AtlasWriter.create(target.url, config={"test": "sparse"}, storage_options=target.options)
    writer.declare_renders("net", "conv1", "channel", n_units=16, height=8, width=8, units_per_shard=8)
    writer.declare_renders("net", "conv1", "diversity", n_units=16, height=8, width=8, units_per_shard=8, samples=2)
    return writer


def test_sparse_units_are_one_object_and_read_back_exactly(target):
    writer = sparse_writer(target)
    images = make_images(3, seed=1) | 1  # no all-black image: a lost unit would read back as zeros
    diverse = np.stack([make_images(2, seed=2), make_images(2, seed=3), make_images(2, seed=4)]) | 1
    with writer.item("sparse-item") as item:
        item.write_renders("net", "conv1", "channel", SPARSE, images, [1.5, 2.5, 3.5])
        item.write_renders("net", "conv1", "diversity", SPARSE, diverse, np.ones((3, 2)))
    record = json.loads(writer.store.get(f"versions/{writer.version}/items/sparse-item.json"))
    assert sorted(record["objects"]) == [
        "renders/net/conv1/channel.objective.zarr/c/0",
        "renders/net/conv1/channel.zarr/c/0/0/0/0",
        "renders/net/conv1/diversity.objective.zarr/c/0/0",
        "renders/net/conv1/diversity.zarr/c/0/0/0/0/0",
    ]
    assert sorted(c["units"] for c in record["covers"] if c["kind"] == "channel") == [[3, 5], [6, 7]]
    writer.publish(expected_items={"sparse-item"})

    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.units("net", "conv1") == SPARSE
    for row, unit in enumerate(SPARSE):
        np.testing.assert_array_equal(atlas.render("net", "conv1", unit), images[row])
        np.testing.assert_array_equal(atlas.render("net", "conv1", unit, kind="diversity"), diverse[row])
        assert atlas.objective("net", "conv1", unit) == [1.5, 2.5, 3.5][row]
    units, grid = atlas.layer_renders("net", "conv1")
    assert units.tolist() == SPARSE
    np.testing.assert_array_equal(grid, images)
    for missing in (5, 7, 0):
        with pytest.raises(StorageError, match=f"unit {missing} has no 'channel' render"):
            atlas.render("net", "conv1", missing)
    atlas.verify()


def test_a_second_write_of_the_same_object_in_one_item_is_refused(target):
    writer = sparse_writer(target)
    images = make_images(3)
    with pytest.raises(StorageError, match=r"work item twice-item wrote renders/net/conv1/channel\.zarr/c/0/0/0/0 twice"):
        with writer.item("twice-item") as item:
            # What the runner used to do for units [3, 4, 6]: one write per consecutive run, each
            # rewriting the whole shard object, so the second silently replaced units 3 and 4.
            item.write_render_block("net", "conv1", "channel", 3, images[:2], np.zeros(2))
            item.write_render_block("net", "conv1", "channel", 6, images[2:], np.zeros(1))
    assert not writer.is_complete("twice-item")


def test_bad_unit_lists_fail_before_any_write(target):
    writer = sparse_writer(target)
    images = make_images(2)
    with writer.item("bad-item") as item:
        with pytest.raises(StorageError, match=r"units \[6, 4\] must be strictly increasing"):
            item.write_renders("net", "conv1", "channel", [6, 4], images, np.zeros(2))
        with pytest.raises(StorageError, match="units 4..9 span more than one shard of 8 units"):
            item.write_renders("net", "conv1", "channel", [4, 9], images, np.zeros(2))
        with pytest.raises(StorageError, match=r"got 2 images for units \[1, 2, 3\]"):
            item.write_renders("net", "conv1", "channel", [1, 2, 3], images, np.zeros(3))
        with pytest.raises(StorageError, match="outside the layer's 16 units"):
            item.write_renders("net", "conv1", "channel", [15, 16], images, np.zeros(2))
        assert item.record.objects == {} and item.record.covers == []
