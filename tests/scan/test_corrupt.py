"""Corrupt, truncated, empty and non-image files in a folder or a Parquet table are skipped, counted
and reported with id and reason; every other image is scanned exactly as if they were absent."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.scan import ChunkCollector, ScanOptions, Scanner, scan_dataset

from .helpers import LAYERS, corrupt_files, png_bytes, random_images, tiny_model, write_folder, write_parquet

SIZE = 10


@pytest.fixture(scope="module")
def model():
    return tiny_model(SIZE)


@pytest.fixture(scope="module")
def scanner(model):
    return Scanner(model, LAYERS, ScanOptions(k=4, chunk_images=16))


@pytest.fixture(scope="module")
def good():
    return {f"good_{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(30, SIZE, seed=5))}


def examples_by_id(result):
    """Examples keyed without listing positions, so scans of different listings compare."""
    table = result.examples_table().drop_columns(["image_index"])
    return sorted(tuple(row.values()) for row in table.to_pylist())


@pytest.fixture(scope="module")
def clean_result(tmp_path_factory, model, scanner, good):
    folder = write_folder(tmp_path_factory.mktemp("clean"), good)
    return scan_dataset(model, str(folder), scanner, loader=LoaderOptions(images_per_batch=8, workers=0))


def check_skips(result, bad_names):
    reasons = {s.image_id: s.reason for s in result.skipped}
    assert set(reasons) == set(bad_names)
    assert reasons["bad_empty.jpg"] == "empty file"
    assert reasons["bad_text.jpg"].startswith("not an image")
    assert reasons["bad_truncated.jpg"].startswith("truncated or corrupt")
    assert reasons["bad_truncated.png"].startswith("truncated or corrupt")
    assert result.scanned == 30 and result.images_covered == 30 + len(bad_names)
    assert "skipped" in result.summary() and str(len(bad_names)) in result.summary()
    table = result.skipped_table()
    assert sorted(table.column("image_id").to_pylist()) == sorted(bad_names)


def test_corrupt_files_in_a_folder_are_skipped_and_reported_with_worker_processes(
    tmp_path, model, scanner, good, clean_result
):
    bad = corrupt_files()
    folder = write_folder(tmp_path / "mixed", {**good, **bad})
    collector = ChunkCollector()
    result = scan_dataset(model, str(folder), scanner, loader=LoaderOptions(images_per_batch=8, workers=2),
                          on_chunk=collector)
    check_skips(result, bad)
    assert examples_by_id(result) == examples_by_id(clean_result)
    listing = list_images(str(folder))
    start, values, valid = collector.array("conv1", "max")
    assert start == 0 and len(values) == len(listing)
    bad_rows = [listing.ids().index(name) for name in bad]
    assert not valid[bad_rows].any() and valid.sum() == 30
    assert np.isnan(values[bad_rows]).all() and not np.isnan(values[valid]).any()


def test_corrupt_rows_in_a_parquet_table_are_skipped_and_reported(tmp_path, model, scanner, good, clean_result):
    bad = {**corrupt_files(), "bad_null": None}
    path = write_parquet(tmp_path / "table.parquet", {**good, **bad}, row_group_size=7)
    listing = list_images(str(path), id_column="name")
    result = scan_dataset(model, listing, scanner, loader=LoaderOptions(images_per_batch=8, workers=0))
    check_skips(result, bad)
    assert {s.image_id: s.reason for s in result.skipped}["bad_null"] == "empty file"
    assert examples_by_id(result) == examples_by_id(clean_result)


def test_a_dataset_with_only_bad_images_scans_nothing_but_does_not_fail(tmp_path, model, scanner):
    folder = write_folder(tmp_path / "bad", corrupt_files())
    result = scan_dataset(model, str(folder), scanner, loader=LoaderOptions(images_per_batch=4, workers=0))
    assert result.scanned == 0 and len(result.skipped) == 6
    assert result.examples_table().num_rows == 0
    assert (result.layers["conv1"].images == 0).all()
