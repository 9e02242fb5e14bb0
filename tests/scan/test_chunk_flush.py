"""A shard's pooled activations leave the scanner as each storage chunk fills, not when the shard ends."""

from __future__ import annotations

import pytest

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.scan import ScanOptions, Scanner

from .helpers import LAYERS, png_bytes, random_images, tiny_model, write_folder

SIZE = 10


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    files = {f"img_{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(24, SIZE, seed=5))}
    return list_images(str(write_folder(tmp_path_factory.mktemp("flush"), files)))


def test_each_full_chunk_is_flushed_before_the_shard_finishes(listing):
    from loupe.pipeline.data import iter_batches

    model = tiny_model(SIZE)
    shard = listing.slice(0, 24)  # three chunks of 8 images, batches of 4
    scanner = Scanner(model, LAYERS, ScanOptions(k=2, chunk_images=8))
    done = [0]
    flushed: list[tuple[int, int, int]] = []  # (chunk start, chunk stop, images done when it was flushed)

    def sink(chunk) -> None:
        if chunk.layer == LAYERS[0] and chunk.kind == "max":
            flushed.append((chunk.start, chunk.stop, done[0]))

    def progress(p) -> None:
        done[0] = p.done

    batches = iter_batches(shard, SIZE, SIZE, options=LoaderOptions(images_per_batch=4, workers=0))
    scanner.scan(batches, shard, on_chunk=sink, on_progress=progress, pad_to=4)
    assert [(a, b) for a, b, _ in flushed] == [(0, 8), (8, 16), (16, 24)]
    # progress is reported after a batch's chunks are flushed: chunk [0, 8) leaves with the batch
    # that completes it (4 images reported before), long before the 24th image is scanned
    assert [when for _, _, when in flushed] == [4, 12, 20]
