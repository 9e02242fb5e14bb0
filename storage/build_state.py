"""Build state: what a build saves for its own workers, in plain formats, checksummed, never pickled.

Dataset listings (Parquet) and probed receptive fields (npz of numbers) live under
`build-state/` beside the versions and are shared by every scan worker and later builds; scan
partials (npz of a shard's mergeable statistics) live inside their version, checksummed through
the item's completion record. Everything read back is as untrusted as anything in a bucket, so:

* arrays are read with `np.load(allow_pickle=False)` and must be numeric, boolean or fixed-width
  strings; tables must be Parquet. A pickle (or anything else) is refused, never executed;
* every `build-state/` object has a checksum sidecar (`<object>.sha256.json`) written BEFORE the
  object: a reader that finds the object without its sidecar refuses it (Loupe never writes one
  that way), and one that finds only the sidecar (a writer died in between) sees no object;
* both are single atomic PUTs (a temporary file and a rename locally).

A listing is also saved in blocks of `LISTING_BLOCK_ROWS` rows, each its own checksummed object,
so a scan worker reads (and verifies) only the blocks its shard overlaps, not the whole dataset's
listing: a ranged read of one big object could not be checked against its whole-object SHA-256.

Errors are StorageError / ChecksumError naming the object's URL.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pyarrow as pa

from loupe.storage import checksums, layout, tables
from loupe.storage.errors import StorageError
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve

if TYPE_CHECKING:
    from loupe.storage.item_writer import ItemWriter
    from loupe.storage.writer import AtlasWriter

SIDECAR_SUFFIX = ".sha256.json"
SIDECAR_FORMAT = "loupe-build-state/1"
_PLAIN_KINDS = "biufU"  # bool, int, uint, float, fixed-width unicode: nothing that needs pickle
LISTING_BLOCK_ROWS = 65536  # rows per listing block: a worker reads at most its shard plus two blocks
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same arrays always give the same bytes


def encode_arrays(arrays: Mapping[str, np.ndarray], where: str = "arrays") -> bytes:
    """A standard .npz of plain arrays with deterministic bytes (retried items rewrite the same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            value = np.asarray(value)
            if value.dtype.kind not in _PLAIN_KINDS:
                raise StorageError(f"{where}: array {name!r} has dtype {value.dtype}; build state holds only "
                                   "numeric, boolean and fixed-width string arrays")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, value, allow_pickle=False)
    return buffer.getvalue()


def decode_arrays(data: bytes, url: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz written by `encode_arrays`; anything else is refused, naming `url`."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an npz archive")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as exc:  # noqa: BLE001 - pickles, garbage, truncated zips: all one clear refusal
        raise StorageError(f"{url} is not a plain-array build-state object ({type(exc).__name__}: {exc}); "
                           "refused, it is never unpickled", url=url) from None
    for name, value in arrays.items():
        if value.dtype.kind not in _PLAIN_KINDS:
            raise StorageError(f"{url}: array {name!r} has dtype {value.dtype}, not a plain array", url=url)
    return arrays


def write_partial_arrays(item: "ItemWriter", name: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Save a work item's intermediate arrays (e.g. a scan shard's statistics) as a checksummed npz partial."""
    item.write_partial(name, encode_arrays(arrays, f"work item {item.key}: partial {name!r}"))


def read_partial_arrays(writer: "AtlasWriter", key: str, name: str) -> dict[str, np.ndarray]:
    """A completed item's npz partial, verified against its record's checksum and refused unless plain arrays."""
    return decode_arrays(writer.read_partial(key, name), partial_url(writer, key, name))


def partial_url(writer: "AtlasWriter", key: str, name: str) -> str:
    """Where a work item's partial lives (for error messages)."""
    return writer.store.location.url_of(f"{layout.version_dir(writer.version)}/{layout.partial(key, name)}")


class BuildState:
    """Listings and receptive fields under an atlas root's `build-state/`, shared across builds."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> "BuildState":
        """The build state of the atlas at `url` (a local folder or any fsspec URL)."""
        return cls(ObjectStore(resolve(url, storage_options)))

    @classmethod
    def of(cls, writer: "AtlasWriter") -> "BuildState":
        return cls(writer.store)

    def url_of(self, rel: str) -> str:
        return self.store.location.url_of(rel)

    def listing_url(self, fingerprint: str) -> str:
        return self.url_of(layout.build_state_listing(fingerprint))

    def receptive_fields_url(self, key: str) -> str:
        return self.url_of(layout.build_state_receptive_fields(key))

    # ---- listings ---------------------------------------------------------------------------
    def put_listing(self, fingerprint: str, table: pa.Table, *, block_rows: int = LISTING_BLOCK_ROWS) -> None:
        """Save a dataset listing table (its schema metadata included) as Parquet, whole and in blocks.

        The blocks are written first, so a whole listing that exists always has its blocks.
        """
        if not isinstance(table, pa.Table):
            raise StorageError(f"listing {fingerprint}: expected a pyarrow.Table, got {type(table).__name__}")
        for index, start in enumerate(range(0, table.num_rows, block_rows)):
            self._put(_listing_block(fingerprint, block_rows, index), tables.encode(table.slice(start, block_rows)))
        self._put(layout.build_state_listing(fingerprint), tables.encode(table))

    def get_listing(self, fingerprint: str) -> pa.Table | None:
        """The saved listing table, or None if none was saved; refuses anything but verified Parquet."""
        return self._get_table(layout.build_state_listing(fingerprint))

    def get_listing_rows(self, fingerprint: str, start: int, stop: int, *,
                         block_rows: int = LISTING_BLOCK_ROWS) -> pa.Table | None:
        """Rows [start, stop) of a saved listing (with its schema metadata), reading only the blocks they
        overlap, each verified against its own sidecar; None if the listing was saved without blocks."""
        if not 0 <= start <= stop:
            raise StorageError(f"listing {fingerprint}: bad row range [{start}, {stop})")
        first, last = start // block_rows, max(start, stop - 1) // block_rows
        parts = []
        for index in range(first, last + 1):
            part = self._get_table(_listing_block(fingerprint, block_rows, index))
            if part is None:
                if parts:
                    url = self.url_of(_listing_block(fingerprint, block_rows, index))
                    raise StorageError(f"listing block {url} is missing (rows [{start}, {stop}) need it)", url=url)
                return None
            parts.append(part)
        joined = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        offset = start - first * block_rows
        if offset + (stop - start) > joined.num_rows:
            url = self.listing_url(fingerprint)
            raise StorageError(f"listing {url} has fewer than {stop} rows (asked for [{start}, {stop}))", url=url)
        return joined.slice(offset, stop - start)

    def _get_table(self, rel: str) -> pa.Table | None:
        data = self._get(rel)
        if data is None:
            return None
        try:
            return tables.decode(data)
        except Exception as exc:  # noqa: BLE001 - not Parquet at all, or a damaged file
            url = self.url_of(rel)
            raise StorageError(f"{url} is not a Parquet listing ({type(exc).__name__}: {exc}); refused", url=url) from None

    # ---- receptive fields -------------------------------------------------------------------
    def put_receptive_fields(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Save an architecture's probed crop boxes (plain arrays) as npz."""
        rel = layout.build_state_receptive_fields(key)
        self._put(rel, encode_arrays(arrays, self.url_of(rel)))

    def get_receptive_fields(self, key: str) -> dict[str, np.ndarray] | None:
        """The saved arrays, or None if none were saved; refuses anything but verified plain arrays."""
        rel = layout.build_state_receptive_fields(key)
        data = self._get(rel)
        return None if data is None else decode_arrays(data, self.url_of(rel))

    # ---- checksummed objects ----------------------------------------------------------------
    def _put(self, rel: str, data: bytes) -> None:
        sidecar = {"format": SIDECAR_FORMAT, **checksums.entry(data)}
        self.store.put(rel + SIDECAR_SUFFIX, checksums.canonical_json(sidecar))
        self.store.put(rel, data)

    def _get(self, rel: str) -> bytes | None:
        data = self.store.get_optional(rel)
        if data is None:
            return None
        url, sidecar_url = self.url_of(rel), self.url_of(rel + SIDECAR_SUFFIX)
        raw = self.store.get_optional(rel + SIDECAR_SUFFIX)
        if raw is None:
            raise StorageError(
                f"build-state object {url} has no checksum sidecar ({sidecar_url}), so Loupe did not write it; "
                "refused. Delete it (a build re-creates build state) if you trust nothing else changed.", url=url)
        try:
            sidecar = json.loads(raw)
            if sidecar.get("format") != SIDECAR_FORMAT:
                raise ValueError(f"format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}")
            expected = {"sha256": str(sidecar["sha256"]), "size": int(sidecar["size"])}
        except Exception as exc:  # noqa: BLE001 - any malformed sidecar is one clear refusal
            raise StorageError(f"checksum sidecar {sidecar_url} of {url} is unreadable ({exc}); refused", url=url) from None
        return checksums.verify(data, expected, url)


def _listing_block(fingerprint: str, block_rows: int, index: int) -> str:
    """Block `index` (rows [index * block_rows, (index + 1) * block_rows)) of a saved listing."""
    listing = layout.build_state_listing(fingerprint)
    return f"{listing[:-len('.parquet')]}.blocks-{block_rows}/{index:08d}.parquet"
