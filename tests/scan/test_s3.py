"""Reading images from s3:// on a real S3 API server (moto on 127.0.0.1) gives the same scan as the
local folder, including from worker processes and through a listing saved on S3."""

from __future__ import annotations

import pytest
import s3fs

from loupe.pipeline.data import DatasetError, Listing, LoaderOptions, list_images
from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset
from loupe.storage.build_state import BuildState

from .helpers import LAYERS, corrupt_files, png_bytes, random_images, tiny_model, write_folder, write_parquet

SIZE = 10


@pytest.fixture
def files():
    data = {f"val/{i % 3}/img_{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(20, SIZE, seed=8))}
    data["val/2/broken.jpg"] = corrupt_files()["bad_truncated.jpg"]
    return data


def upload(s3_options, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    fs = s3fs.S3FileSystem(**s3_options)
    for name, data in files.items():
        fs.pipe_file(f"{bucket}/{prefix}/{name}", data)


def test_s3_prefix_scans_like_the_local_folder(tmp_path, files, s3_options, s3_bucket):
    local = write_folder(tmp_path / "local", files)
    upload(s3_options, s3_bucket, "datasets/photos", files)
    model = tiny_model(SIZE)
    scanner = Scanner(model, LAYERS, ScanOptions(k=4))
    loader = LoaderOptions(images_per_batch=8, workers=0)

    remote_listing = list_images(f"s3://{s3_bucket}/datasets/photos/val/", storage_options=s3_options)
    local_listing = list_images(str(local / "val"))
    assert remote_listing.root == f"s3://{s3_bucket}/datasets/photos/val"
    assert remote_listing.ids() == local_listing.ids()

    state = BuildState.open(f"s3://{s3_bucket}/atlas", s3_options)
    state.put_listing(remote_listing.fingerprint, remote_listing.to_table())
    shard = Listing.from_table(state.get_listing(remote_listing.fingerprint), "saved listing")
    remote = scan_dataset(model, shard, scanner, loader=LoaderOptions(images_per_batch=8, workers=2),
                          storage_options=s3_options)
    here = scan_dataset(model, local_listing, scanner, loader=loader)
    assert remote.examples_table().equals(here.examples_table())
    assert remote.units_table().equals(here.units_table())
    assert [(s.image_id, s.reason) for s in remote.skipped] == [(s.image_id, s.reason) for s in here.skipped]
    assert [s.image_id for s in remote.skipped] == ["2/broken.jpg"]


def test_parquet_on_s3_and_clear_errors_for_missing_prefixes(tmp_path, s3_options, s3_bucket):
    images = {f"id{i}": png_bytes(a) for i, a in enumerate(random_images(6, SIZE, seed=2))}
    path = write_parquet(tmp_path / "t.parquet", images, row_group_size=4)
    fs = s3fs.S3FileSystem(**s3_options)
    fs.put_file(str(path), f"{s3_bucket}/tables/part-0.parquet")
    listing = list_images(f"s3://{s3_bucket}/tables", storage_options=s3_options, id_column="name")
    assert listing.kind == "parquet" and listing.ids() == [f"id{i}" for i in range(6)]
    result = scan_dataset(tiny_model(SIZE), listing, ["conv1"], options=ScanOptions(k=2),
                          loader=LoaderOptions(images_per_batch=4, workers=0), storage_options=s3_options)
    assert result.scanned == 6 and not result.skipped
    with pytest.raises(DatasetError, match=f"s3://{s3_bucket}/nothing-here"):
        list_images(f"s3://{s3_bucket}/nothing-here/", storage_options=s3_options)


def test_a_prefix_of_many_folders_lists_exactly_what_a_recursive_find_lists(tmp_path, s3_options, s3_bucket):
    """Folders are listed side by side (ImageNet's 1,000 class folders); the listing must not change."""
    from loupe.pipeline.data import sources

    names = {f"train/c{c:02d}/{'sub/' if i == 2 else ''}img_{c}_{i}.png" for c in range(12) for i in range(3)}
    names |= {"train/top.png", "train/.hidden/x.png", "train/c03/.DS_Store"}
    data = png_bytes(random_images(1, SIZE, seed=1)[0])
    upload(s3_options, s3_bucket, "imagenet", {name: data for name in names})
    write_folder(tmp_path / "imagenet", {name: data for name in names})
    fs = s3fs.S3FileSystem(**s3_options)
    for url, filesystem, path in ((f"s3://{s3_bucket}/imagenet/train", fs, f"{s3_bucket}/imagenet/train"),
                                  (str(tmp_path / "imagenet" / "train"), None, str(tmp_path / "imagenet" / "train"))):
        listing = list_images(url, storage_options=s3_options if filesystem else None)
        expected = sorted(n[len("train/"):] for n in names if "/." not in n)
        assert listing.ids() == expected, url
        if filesystem is not None:
            assert sources._find(fs, path, url) == sorted(fs.find(path, withdirs=False))
