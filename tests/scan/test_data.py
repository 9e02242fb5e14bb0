"""Dataset sources: stable ids, deterministic order, shards covering every image once, saved listings,
and decoding identical to torchvision's eval transforms."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from torchvision import transforms

from loupe.pipeline.data import DatasetError, Listing, decode_image, list_images
from loupe.pipeline.data.decode import ImageDecodeError

from .helpers import corrupt_files, jpeg_bytes, png_bytes, random_images, write_folder, write_parquet


@pytest.fixture
def folder(tmp_path):
    arrays = random_images(11, 8)
    files = {f"b/{i:02d}.png": png_bytes(a) for i, a in enumerate(arrays[:6])}
    files.update({f"a/{i:02d}.PNG": png_bytes(a) for i, a in enumerate(arrays[6:])})
    files.update({"notes.txt": b"hello", ".hidden/x.png": png_bytes(arrays[0]), "a/.DS_Store": b"\0"})
    return write_folder(tmp_path / "data", files)


def test_folder_listing_has_relative_ids_in_sorted_order(folder):
    listing = list_images(str(folder))
    assert listing.ids() == sorted(listing.ids()) and len(listing) == 11
    assert listing.ids()[0] == "a/00.PNG" and listing.ids()[-1] == "b/05.png"
    assert listing.keys.tolist() == list(range(11))
    assert listing.ignored == 3 and "notes.txt" in listing.ignored_examples
    assert listing.uris([0])[0] == f"{folder}/a/00.PNG"
    again = list_images(str(folder) + "/")
    assert again.fingerprint == listing.fingerprint and again.ids() == listing.ids()


@pytest.mark.parametrize("count, align", [(1, 1), (3, 1), (4, 4), (7, 2), (20, 1), (5, 3)])
def test_shards_are_contiguous_disjoint_and_cover_every_image_once(folder, count, align):
    listing = list_images(str(folder))
    shards = listing.shards(count, align=align)
    assert len(shards) == count
    assert [i for s in shards for i in s.ids()] == listing.ids()
    assert [p for s in shards for p in s.positions.tolist()] == list(range(len(listing)))
    for a, b in zip(shards, shards[1:]):
        assert a.stop == b.start and (a.stop % align == 0 or a.stop == len(listing))
    assert all(s.fingerprint == listing.fingerprint and s.total == len(listing) for s in shards)
    assert [listing.shard(count, i, align=align).ids() for i in range(count)] == [s.ids() for s in shards]


def test_listing_round_trips_through_parquet_and_pickled_shards_stay_small(folder, tmp_path):
    listing = list_images(str(folder))
    pq.write_table(listing.to_table(), tmp_path / "listing.parquet")
    loaded = Listing.from_table(pq.read_table(tmp_path / "listing.parquet"), "listing.parquet")
    assert loaded.ids() == listing.ids() and loaded.fingerprint == listing.fingerprint
    assert loaded.keys.tolist() == listing.keys.tolist() and loaded.root == listing.root
    shard = loaded.shard(3, 2)
    assert pickle.loads(pickle.dumps(shard)).ids() == shard.ids()
    big = Listing.build("folder", "/x", [f"{i:07d}.jpg" for i in range(100_000)], {"path": [f"{i:07d}.jpg" for i in range(100_000)]})
    assert len(pickle.dumps(big.shard(100, 5))) < len(pickle.dumps(big)) / 50


def test_listing_errors_name_the_culprit(tmp_path, folder):
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="shard index"):
        list_images(str(folder)).shard(3, 3)
    with pytest.raises(DatasetError, match="shard count"):
        list_images(str(folder)).shard(0, 0)
    with pytest.raises(DatasetError, match="t.parquet is a table but not a Loupe listing"):
        write_parquet(tmp_path / "t.parquet", {"a": b"x"})
        Listing.from_table(pq.read_table(tmp_path / "t.parquet"), "t.parquet")
    table = list_images(str(folder)).to_table()
    with pytest.raises(DatasetError, match="saved.parquet: column 'path' has type int64"):
        Listing.from_table(table.set_column(2, "path", pa.array(range(table.num_rows))), "saved.parquet")
    with pytest.raises(DatasetError, match="saved.parquet has no 'key' column"):
        Listing.from_table(table.drop_columns(["key"]), "saved.parquet")


def test_parquet_listing_uses_the_id_column_or_file_and_row(tmp_path):
    images = {f"p{i}": png_bytes(a) for i, a in enumerate(random_images(5, 8))}
    write_parquet(tmp_path / "tables" / "part-0.parquet", images, row_group_size=2)
    with_ids = list_images(str(tmp_path / "tables"), id_column="name")
    assert with_ids.kind == "parquet" and with_ids.ids() == ["p0", "p1", "p2", "p3", "p4"]
    assert with_ids.image_column == "image"
    without = list_images(str(tmp_path / "tables" / "part-0.parquet"))
    assert without.ids()[:2] == ["part-0.parquet#0", "part-0.parquet#1"]
    with pytest.raises(DatasetError, match="no id column 'nope'"):
        list_images(str(tmp_path / "tables"), id_column="nope")

def test_parquet_ids_must_be_unique(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "a"], "image": pa.array([b"1", b"2", b"3"], pa.binary())}),
                   tmp_path / "dup.parquet")
    with pytest.raises(DatasetError, match="'a' appears more than once"):
        list_images(str(tmp_path / "dup.parquet"), id_column="id")


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (9, 9), (300, 17)])
def test_decoding_matches_torchvision_eval_transforms(shape):
    array = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.PILToTensor()])
    expected = reference(Image.fromarray(array)).numpy()
    assert np.array_equal(decode_image(png_bytes(array), 32, 36), expected)


def test_decoding_converts_modes_and_applies_exif_orientation():
    gray = Image.fromarray(np.full((10, 20), 200, dtype=np.uint8), mode="L")
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), 8, 8)
    assert out.shape == (3, 8, 8) and (out == 200).all()
    wide = np.zeros((8, 16, 3), dtype=np.uint8)
    wide[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    rotated = decode_image(jpeg_bytes(wide, exif=exif.tobytes()), 8, 8)
    assert rotated[:, :4].mean() > 200 and rotated[:, 4:].mean() < 50  # left half now on top


@pytest.mark.parametrize("name, reason", [
    ("bad_empty.jpg", "empty file"),
    ("bad_text.jpg", "not an image"),
    ("bad_truncated.jpg", "truncated or corrupt"),
    ("bad_truncated.png", "truncated or corrupt"),
    ("bad_header_only.png", "truncated or corrupt"),
    ("bad_garbage.webp", "not an image"),
])
def test_corrupt_files_raise_a_short_reason(name, reason):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(corrupt_files()[name], 8, 8)
    assert caught.value.reason.startswith(reason)
