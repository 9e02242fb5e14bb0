"""Zarr v3 plumbing shared by renders and activations: metadata, encoding, opening for reads.

Writers never talk to a remote zarr store. They encode a block in an in-memory zarr store that
holds the array's exact metadata, then upload the finished chunk/shard objects with one PUT each.
That keeps writes to one request per object (zarr's own sharded write would GET the old shard
first), gives us the bytes to checksum, and produces exactly what stock zarr would have written.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.array import AsyncArray
from zarr.core.buffer.cpu import Buffer as CpuBuffer
from zarr.storage import MemoryStore, StorePath

METADATA_KEY = "zarr.json"


def compressors() -> list:
    """zstd for size, then CRC32C over each stored (inner) chunk so corruption is caught on every read."""
    return [ZstdCodec(level=3), Crc32cCodec()]


def metadata_bytes(
    shape: tuple[int, ...],
    dtype: str,
    chunks: tuple[int, ...],
    shards: tuple[int, ...] | None,
    dimension_names: list[str],
    attributes: dict[str, Any],
    fill_value: Any = 0,
) -> bytes:
    """The zarr.json that stock zarr writes for this array (deterministic for equal arguments)."""
    store_dict: dict = {}
    zarr.create_array(
        MemoryStore(store_dict),
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=compressors(),
        fill_value=fill_value,
        dimension_names=dimension_names,
        attributes=attributes,
        zarr_format=3,
    )
    return store_dict[METADATA_KEY].to_bytes()


def encode_region(metadata: bytes, region: tuple[slice, ...], values: np.ndarray) -> dict[str, bytes]:
    """Encode `values` written at `region` of an empty array; returns {chunk key: object bytes}."""
    return _encode(metadata, [(region, values)])


def encode_rows(metadata: bytes, rows: Sequence[int], values: np.ndarray) -> dict[str, bytes]:
    """Encode `values[i]` at first-axis index `rows[i]` (strictly increasing) of an empty array.

    Every object comes out of one encode holding all the rows, so a sparse set of rows inside one
    shard still yields each object exactly once; rows not given stay the fill value (inside a
    shard: inner chunks that are simply absent).
    """
    rows = [int(r) for r in rows]
    writes = []
    start = 0
    for stop in range(1, len(rows) + 1):
        if stop == len(rows) or rows[stop] != rows[stop - 1] + 1:
            writes.append(((slice(rows[start], rows[stop - 1] + 1),), values[start:stop]))
            start = stop
    return _encode(metadata, writes)


def _encode(metadata: bytes, writes: list[tuple[tuple[slice, ...], np.ndarray]]) -> dict[str, bytes]:
    store_dict: dict = {METADATA_KEY: CpuBuffer.from_bytes(metadata)}
    # write_empty_chunks: an all-black render still gets its object, so every item always writes
    # the same set of objects (no stale object survives a rewrite, reuse copies what exists).
    array = open_from_metadata(MemoryStore(store_dict), "", metadata, config={"write_empty_chunks": True})
    for region, values in writes:
        array[region] = values
    return {k: v.to_bytes() for k, v in store_dict.items() if k != METADATA_KEY}


def outer_chunk_shape(meta: dict) -> tuple[int, ...]:
    """Shape of one stored object (the shard when sharded, else the chunk)."""
    return tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])


def open_from_metadata(store: Any, path: str, metadata: bytes | dict, config: dict | None = None) -> zarr.Array:
    """Open an array whose metadata we already hold and verified, without fetching zarr.json."""
    meta = json.loads(metadata) if isinstance(metadata, (bytes, str)) else metadata
    return zarr.Array(AsyncArray(metadata=meta, store_path=StorePath(store, path), config=config))


def layout_fingerprint(meta: dict) -> dict:
    """The parts of an array's metadata that decide where and how a chunk object is encoded."""
    return {k: meta.get(k) for k in ("data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")}


def decode_region(metadata: bytes, objects: dict[str, bytes], region: tuple[slice, ...]) -> np.ndarray:
    """Read `region` of an array from the given (already verified) object bytes, in memory."""
    store_dict: dict = {METADATA_KEY: CpuBuffer.from_bytes(metadata)}
    store_dict.update({key: CpuBuffer.from_bytes(data) for key, data in objects.items()})
    return open_from_metadata(MemoryStore(store_dict), "", metadata)[region]
