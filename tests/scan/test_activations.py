"""Pooled activations (and full maps when asked) stream out in image order, in chunks aligned to
listing positions, equal to the activations themselves; without a sink nothing is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loupe.pipeline.data import LoaderOptions, iter_batches, list_images
from loupe.pipeline.models import capture
from loupe.pipeline.scan import ChunkCollector, ScanError, ScanOptions, Scanner, scan_dataset

from .helpers import LAYERS, corrupt_files, png_bytes, random_images, tiny_model, write_folder

SIZE = 10


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    files = {f"img_{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(37, SIZE, seed=3))}
    files["img_05x.jpg"] = corrupt_files()["bad_text.jpg"]
    return list_images(str(write_folder(tmp_path_factory.mktemp("acts"), files)))


def test_pooled_and_spatial_chunks_match_the_activations(listing):
    model = tiny_model(SIZE)
    shard = listing.slice(3, 38)  # starts mid-chunk: its first chunk is partial
    chunks = ChunkCollector()
    options = ScanOptions(k=3, chunk_images=8, spatial_layers=("clamp",), spatial_chunk_images=5)
    scan_dataset(model, shard, LAYERS, options=options, loader=LoaderOptions(images_per_batch=6, workers=0),
                 on_chunk=chunks)
    pooled = [(c.start, c.stop) for c in chunks.chunks if c.layer == "conv1" and c.kind == "max"]
    assert pooled == [(3, 8), (8, 16), (16, 24), (24, 32), (32, 38)]
    spatial = [(c.start, c.stop) for c in chunks.chunks if c.kind == "spatial"]
    assert spatial == [(3, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30), (30, 35), (35, 38)]

    expected = {name: {} for name in LAYERS}
    with capture(model, LAYERS) as cap, torch.no_grad():
        for batch in iter_batches(shard, SIZE, SIZE, options=LoaderOptions(images_per_batch=64, workers=0)):
            for name, value in cap.run(batch.images.float() / 255).items():
                for position, row in zip(batch.positions.tolist(), value):
                    expected[name][position] = row
    bad = listing.ids().index("img_05x.jpg")
    for name in LAYERS:
        for kind, reduce in (("max", lambda t: t.flatten(1).amax(1)), ("mean", lambda t: t.flatten(1).mean(1))):
            start, values, valid = chunks.array(name, kind)
            assert start == 3 and values.shape == (35, model.catalog[name].channels) and values.dtype == np.float16
            assert not valid[bad - 3] and np.isnan(values[bad - 3]).all() and valid.sum() == 34
            for position, row in expected[name].items():
                assert np.array_equal(values[position - 3], reduce(row).numpy().astype(np.float16)), (name, kind)
    start, maps, valid = chunks.array("clamp", "spatial")
    assert maps.shape == (35, 5, 5, 5)
    for position, row in expected["clamp"].items():
        assert np.array_equal(maps[position - 3], row.numpy().astype(np.float16))


def test_without_a_sink_no_chunks_and_bad_options_fail_early(listing):
    model = tiny_model(SIZE)
    result = scan_dataset(model, listing, ["conv1"], options=ScanOptions(k=2),
                          loader=LoaderOptions(images_per_batch=16, workers=0))
    assert result.scanned == 37
    with pytest.raises(ScanError, match="spatial_layers"):
        Scanner(model, ["conv1"], ScanOptions(spatial_layers=("conv3",)))
    with pytest.raises(ScanError, match="scan.k"):
        ScanOptions(k=0)
    with pytest.raises(ValueError, match="conv9"):
        Scanner(model, ["conv1", "conv9"])
