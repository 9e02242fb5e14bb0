"""Build state (listings, receptive fields, partial arrays) is stored in plain, checksummed formats
through the real store, on a local folder and on S3, and anything else is refused, never unpickled."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pytest

from loupe.storage import ChecksumError, StorageError
from loupe.storage.build_state import SIDECAR_SUFFIX, BuildState, decode_arrays, encode_arrays
from loupe.storage.checksums import canonical_json, entry

from tests.scan.helpers import planted_pickle

FINGERPRINT = "f" * 64
KEY = "0123456789abcdef0123456789abcdef"
LISTING = "build-state/listings/" + FINGERPRINT + ".parquet"
FIELDS = "build-state/receptive-fields/" + KEY + ".npz"


@pytest.fixture
def state(target) -> BuildState:
    return BuildState.open(target.url, target.options)


def _listing_table() -> pa.Table:
    table = pa.table({"id": ["a.png", "b.png"], "key": pa.array([0, 1], pa.int64()), "path": ["a.png", "b.png"]})
    return table.replace_schema_metadata({b"loupe.listing": b'{"format": 1}'})


def _arrays() -> dict[str, np.ndarray]:
    return {"layers": np.array(["conv1", "layer1.0.bn1"]), "layer0.boxes": np.arange(24, dtype=np.int32).reshape(1, 6, 4),
            "layer0.input_size": np.array([32, 32]), "layer0.layer": np.array("conv1")}


def _plant(state: BuildState, rel: str, data: bytes, *, forge_sidecar: bool) -> None:
    """What someone with write access to the bucket could do: replace an object (and its sidecar)."""
    state.store.put(rel, data)
    if forge_sidecar:
        state.store.put(rel + SIDECAR_SUFFIX, canonical_json({"format": "loupe-build-state/1", **entry(data)}))


def test_listings_and_fields_round_trip_with_a_sidecar(state, target):
    assert state.get_listing(FINGERPRINT) is None and state.get_receptive_fields(KEY) is None
    state.put_listing(FINGERPRINT, _listing_table())
    state.put_receptive_fields(KEY, _arrays())
    table = state.get_listing(FINGERPRINT)
    assert table.equals(_listing_table()) and table.schema.metadata == _listing_table().schema.metadata
    got = state.get_receptive_fields(KEY)
    assert got.keys() == _arrays().keys()
    assert all(np.array_equal(got[n], v) and got[n].dtype == v.dtype for n, v in _arrays().items())
    sidecar = json.loads(state.store.get(FIELDS + SIDECAR_SUFFIX))
    assert sidecar["sha256"] == entry(state.store.get(FIELDS))["sha256"]
    # the stored object is a stock npz: numpy reads it without Loupe and without pickle
    assert np.array_equal(np.load(io.BytesIO(state.store.get(FIELDS)), allow_pickle=False)["layer0.boxes"],
                          _arrays()["layer0.boxes"])


@pytest.mark.parametrize("rel", [LISTING, FIELDS])
@pytest.mark.parametrize("forge_sidecar", [False, True])
def test_a_planted_pickle_is_refused_naming_the_object_and_never_run(state, target, tmp_path, rel, forge_sidecar):
    control = tmp_path / "control-marker"
    pickle.loads(planted_pickle(control))
    assert control.exists(), "the payload must be live, or this test proves nothing"
    marker = tmp_path / "marker"
    _plant(state, rel, planted_pickle(marker), forge_sidecar=forge_sidecar)
    read = state.get_listing if rel == LISTING else state.get_receptive_fields
    with pytest.raises(StorageError) as error:
        read(FINGERPRINT if rel == LISTING else KEY)
    url = f"{target.url}/{rel}"
    assert error.value.url == url and url in str(error.value)
    assert ("no checksum sidecar" if not forge_sidecar else "refused") in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("rel", [LISTING, FIELDS])
def test_a_flipped_byte_fails_the_checksum_naming_the_object(state, target, rel):
    state.put_listing(FINGERPRINT, _listing_table())
    state.put_receptive_fields(KEY, _arrays())
    data = bytearray(state.store.get(rel))
    data[len(data) // 2] ^= 0x01
    state.store.put(rel, bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch") as error:
        state.get_listing(FINGERPRINT) if rel == LISTING else state.get_receptive_fields(KEY)
    assert error.value.url == f"{target.url}/{rel}"


def test_a_sidecar_without_its_object_is_an_unfinished_write(state):
    """The sidecar goes first: a writer killed between the two PUTs leaves nothing readable."""
    state.put_receptive_fields(KEY, _arrays())
    state.store.delete(FIELDS)
    assert state.get_receptive_fields(KEY) is None
    state.put_receptive_fields(KEY, _arrays())
    assert state.get_receptive_fields(KEY) is not None


def test_npz_bytes_are_deterministic_and_only_plain_arrays_pass(tmp_path):
    assert encode_arrays(_arrays()) == encode_arrays(_arrays())
    with pytest.raises(StorageError, match="array 'ids' has dtype object"):
        encode_arrays({"ids": np.array(["a", None], dtype=object)})
    marker = tmp_path / "marker"
    smuggled = io.BytesIO()  # a real npz whose member is an object array: np.save pickles it
    np.savez(smuggled, boxes=np.array([planted_pickle(marker), pickle.loads], dtype=object))
    for data in (smuggled.getvalue(), planted_pickle(marker), b"\x00garbage", encode_arrays(_arrays())[:40]):
        with pytest.raises(StorageError, match="s3://b/p.npz is not a plain-array build-state object"):
            decode_arrays(data, "s3://b/p.npz")
    assert not marker.exists()


def _long_listing(rows: int = 10) -> pa.Table:
    ids = [f"img{i:02d}.png" for i in range(rows)]
    table = pa.table({"id": ids, "key": pa.array(range(rows), pa.int64()), "path": ids})
    return table.replace_schema_metadata({b"loupe.listing": b'{"format": 1}'})


def test_listing_rows_read_only_the_blocks_they_overlap_each_verified(state, target):
    """A worker's shard reads its own blocks: a damaged block fails only the reads that touch it."""
    table = _long_listing()
    assert state.get_listing_rows(FINGERPRINT, 0, 4, block_rows=4) is None  # nothing saved yet
    state.put_listing(FINGERPRINT, table, block_rows=4)  # blocks [0, 4), [4, 8), [8, 10)
    for start, stop in ((0, 10), (3, 9), (4, 8), (9, 10), (5, 5)):
        rows = state.get_listing_rows(FINGERPRINT, start, stop, block_rows=4)
        assert rows.equals(table.slice(start, stop - start)) and rows.schema.metadata == table.schema.metadata
    middle = f"build-state/listings/{FINGERPRINT}.blocks-4/00000001.parquet"
    assert state.store.get(middle)  # rows [4, 8)
    data = bytearray(state.store.get(middle))
    data[len(data) // 2] ^= 0x01
    state.store.put(middle, bytes(data))
    assert state.get_listing_rows(FINGERPRINT, 0, 4, block_rows=4).equals(table.slice(0, 4))
    assert state.get_listing_rows(FINGERPRINT, 8, 10, block_rows=4).equals(table.slice(8, 2))
    with pytest.raises(ChecksumError, match="checksum mismatch") as error:
        state.get_listing_rows(FINGERPRINT, 3, 5, block_rows=4)
    assert error.value.url == f"{target.url}/{middle}"
    with pytest.raises(StorageError, match="fewer than 12 rows"):
        state.get_listing_rows(FINGERPRINT, 8, 12, block_rows=4)
