"""`prefetch_to_device` changes where images are, never which batches arrive or in what order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loupe.pipeline.data import LoaderOptions, iter_batches, list_images, prefetch_to_device
from tests.scan.helpers import corrupt_files, png_bytes, random_images, write_folder

SIZE = 8


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    files = {f"img_{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(11, SIZE, seed=4))}
    files["img_03x.jpg"] = corrupt_files()["bad_text.jpg"]
    return list_images(str(write_folder(tmp_path_factory.mktemp("prefetch"), files)))


def load(listing, pin_memory: bool = False) -> list:
    return list(iter_batches(listing, SIZE, SIZE, options=LoaderOptions(images_per_batch=4, workers=0),
                             pin_memory=pin_memory))


def assert_same(got: list, expected: list, device: str) -> None:
    assert [(b.start, b.stop) for b in got] == [(b.start, b.stop) for b in expected]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.keys, b.keys)
        assert a.skipped == b.skipped
        assert a.images.device.type == device
        assert torch.equal(a.images.cpu(), b.images)


def test_on_cpu_the_same_batches_pass_through_in_order(listing):
    batches = load(listing)
    got = list(prefetch_to_device(iter(batches), "cpu"))
    assert len(got) == 3 and all(a is b for a, b in zip(got, batches))
    assert_same(list(prefetch_to_device(load(listing), torch.device("cpu"))), batches, "cpu")
    assert sum(len(b.skipped) for b in got) == 1


def test_an_empty_stream_stays_empty():
    assert list(prefetch_to_device(iter([]), "cpu")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (side-stream copies)")
def test_on_cuda_pinned_batches_arrive_on_the_device_unchanged(listing):
    expected = load(listing)
    got = []
    for batch in prefetch_to_device(load(listing, pin_memory=True), "cuda"):
        got.append(batch)
        batch.images.float().sum().item()  # a consumer on the current stream
    assert_same(got, expected, "cuda")
    assert list(prefetch_to_device(iter([]), "cuda")) == []
