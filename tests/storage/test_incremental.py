"""Rebuilds reuse finished items of an earlier version instead of recomputing them."""

from __future__ import annotations

import numpy as np

from tests.storage.atlas_samples import N_UNITS, declare_small, write_small
from loupe.storage import AtlasWriter, open_atlas


def test_rebuild_with_nothing_changed_reuses_every_item(target):
    first = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(first)
    first.publish()

    second = AtlasWriter.create(target.url, storage_options=target.options)
    assert second.base_version == first.version
    declare_small(second)
    reused = second.reuse_items(built.keys)  # source defaults to the published version
    assert reused == set(built.keys)
    assert second.completed_items() == set(built.keys)
    second.publish(expected_items=built.keys)

    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.version == second.version != first.version
    np.testing.assert_array_equal(atlas.layer_renders("net", "conv1")[1], built.images)
    np.testing.assert_array_equal(atlas.activations("net", "conv1")[:], built.activations)
    assert atlas.units_table("net", "conv1").num_rows == N_UNITS
    atlas.verify()
    # The old version is untouched and still complete on its own.
    old = open_atlas(target.url, version=first.version, storage_options=target.options)
    assert old.verify() > 0


def test_only_changed_items_are_recomputed_and_layout_changes_are_not_reused(target):
    first = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(first)
    first.publish()

    second = AtlasWriter.create(target.url, storage_options=target.options)
    # 'channel' renders get a new shard size, so their stored shards no longer fit the array.
    second.declare_renders("net", "conv1", "channel", n_units=N_UNITS, height=8, width=8, units_per_shard=5)
    second.declare_renders("net", "conv1", "diversity", n_units=N_UNITS, height=8, width=8, units_per_shard=4, samples=2)
    second.declare_activations("net", "conv1", n_images=12, n_channels=10, images_per_chunk=6)
    reused = second.reuse_items(built.keys)
    assert reused == {k for k in built.keys if "-channel-" not in k}
    for start in (0, 5):
        with second.item(f"render-channel-v2-{start}") as item:
            item.write_render_block("net", "conv1", "channel", start, built.images[start:start + 5], np.ones(5))
    second.publish()
    atlas = open_atlas(target.url, storage_options=target.options)
    np.testing.assert_array_equal(atlas.layer_renders("net", "conv1")[1], built.images)
    np.testing.assert_array_equal(atlas.layer_renders("net", "conv1", "diversity")[1], built.diverse)
    assert atlas.objective("net", "conv1", 7) == 1.0


def test_items_of_an_interrupted_unpublished_build_are_reused(target):
    crashed = AtlasWriter.create(target.url, storage_options=target.options)
    built = write_small(crashed, skip={"render-net-conv1-diversity-8-s0"})  # never published

    rerun = AtlasWriter.create(target.url, storage_options=target.options)
    declare_small(rerun)
    assert rerun.reuse_items(built.keys) == set()  # nothing published yet
    reused = rerun.reuse_items(built.keys, source=crashed.version)
    assert reused == set(built.keys) - {"render-net-conv1-diversity-8-s0"}
    missing = set(built.keys) - rerun.completed_items()
    assert missing == {"render-net-conv1-diversity-8-s0"}
    with rerun.item("render-net-conv1-diversity-8-s0") as item:
        item.write_render_block("net", "conv1", "diversity", 8, built.diverse[8:], np.zeros((2, 2)))
    rerun.publish(expected_items=built.keys)
    atlas = open_atlas(target.url, storage_options=target.options)
    np.testing.assert_array_equal(atlas.layer_renders("net", "conv1", "diversity")[1], built.diverse)
