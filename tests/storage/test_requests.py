"""Request counts on S3: a unit costs a constant number of requests, writes one PUT per object."""

from __future__ import annotations

import numpy as np
import pytest

from tests.storage.atlas_samples import N_UNITS, S3Requests, Target, write_small
from loupe.storage import AtlasWriter, open_atlas


@pytest.fixture
def s3_target(s3_bucket, s3_options) -> Target:
    return Target("s3", f"s3://{s3_bucket}/atlases/counted", s3_options)


def test_one_unit_costs_two_requests_and_a_grid_one_per_shard(s3_target):
    writer = AtlasWriter.create(s3_target.url, storage_options=s3_target.options)
    built = write_small(writer)
    writer.publish()
    with S3Requests() as requests:
        atlas = open_atlas(s3_target.url, storage_options=s3_target.options)
        assert len(requests.sent) == 2  # pointer + manifest
        for unit in (0, 5, 9):
            requests.clear()
            np.testing.assert_array_equal(atlas.render("net", "conv1", unit), built.images[unit])
            assert [m for m, _, _ in requests.sent] == ["GET", "GET"]  # shard index, then the unit's chunk
            assert all(r is not None for _, _, r in requests.sent)  # both are byte ranges
        requests.clear()
        atlas.layer_renders("net", "conv1")
        full_shards = N_UNITS // 4
        # Full shards come in one GET each; the partial last shard reads its index and its units.
        assert len(requests.sent) == full_shards + 1 + (N_UNITS % 4)


def test_a_render_item_writes_one_put_per_object_and_no_reads(s3_target):
    writer = AtlasWriter.create(s3_target.url, storage_options=s3_target.options)
    write_small(writer)  # declares arrays and caches their metadata
    with S3Requests() as requests:
        with writer.item("again") as item:
            item.write_render_block("net", "conv1", "channel", 4, np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4))
    methods = [m for m, _, _ in requests.sent]
    assert methods == ["PUT", "PUT", "PUT"]  # images shard, objective chunk, completion record


def test_declaring_many_arrays_is_two_concurrent_rounds_not_two_requests_each(s3_target):
    """Declarations in `writer.declaring()` are read and written together, and say the same as one by one."""
    writer = AtlasWriter.create(s3_target.url, storage_options=s3_target.options)
    layers = [f"layer{i}" for i in range(12)]

    def declare_all(w: AtlasWriter) -> None:
        for layer in layers:
            w.declare_renders("net", layer, "channel", n_units=8, height=8, width=8, units_per_shard=4)

    with S3Requests() as requests, writer.declaring():
        declare_all(writer)
        assert requests.sent == [], "nothing is sent inside the block"
    methods = [m for m, _, _ in requests.sent]
    assert methods.count("PUT") == 2 * len(layers)
    assert "GET" not in methods and "HEAD" not in methods, "a version this writer created has nothing to read back"
    again = AtlasWriter.resume(s3_target.url, writer.version, s3_target.options)
    with S3Requests() as requests, again.declaring():
        declare_all(again)  # the same arrays again: read, found equal, nothing written
    methods = [m for m, _, _ in requests.sent]
    assert methods.count("PUT") == 0 and methods.count("GET") == 2 * len(layers)
    with pytest.raises(Exception, match="already declared with a different shape"):
        with again.declaring():
            again.declare_renders("net", "layer3", "channel", n_units=9, height=8, width=8, units_per_shard=4)
    with pytest.raises(Exception, match="already declared with a different shape"):
        with again.declaring():
            again.declare_renders("net", "new", "channel", n_units=8, height=8, width=8, units_per_shard=4)
            again.declare_renders("net", "new", "channel", n_units=9, height=8, width=8, units_per_shard=4)
